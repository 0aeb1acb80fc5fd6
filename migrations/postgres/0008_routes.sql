-- The route an execution was submitted to (`[routes.NAME]`), when it named one instead of a
-- provider. `provider` is the member it runs on now; a retry may move it to another.
ALTER TABLE executions ADD COLUMN route TEXT;
