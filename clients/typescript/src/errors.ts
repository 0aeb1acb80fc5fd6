import type { components } from "./schema.js";

/** An RFC 9457 problem, as the API serves it (`application/problem+json`). */
export type Problem = components["schemas"]["Problem"];

/** Every error this client throws. */
export class LanesError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
  }
}

/**
 * The server could not be reached, or the connection broke before an answer came, on every
 * try. `cause` is the last error `fetch` threw.
 */
export class ConnectionError extends LanesError {}

/**
 * Thrown by a text stream (`streamText`) when the execution's attempt `attempt` starts its
 * answer over after the text stream gave pieces of an earlier one (that attempt failed and
 * was retried). Drop what you showed of the text (`discarded`), then iterate over the same
 * text stream again: the new attempt's text follows, from its start.
 */
export class RestartedError extends LanesError {
  constructor(
    readonly attempt: number,
    readonly discarded: string,
  ) {
    super(`attempt ${attempt} starts the answer over: drop the text so far`);
  }
}

/** The API answered with an error status. `problem` is its body. */
export class ApiError extends LanesError {
  /** The HTTP status. */
  readonly status: number;
  /** The problem the API answered with (or one made from the status when the body was not one). */
  readonly problem: Problem;
  /** The problem's kind: `type` after `urn:lanes:problem:` (`not-found`, `invalid`, ...). */
  readonly kind: string;

  constructor(status: number, problem: Problem) {
    super(`${status} ${problem.title}: ${problem.detail}`);
    this.status = status;
    this.problem = problem;
    this.kind = problem.type.startsWith(PREFIX) ? problem.type.slice(PREFIX.length) : problem.type;
  }
}

const PREFIX = "urn:lanes:problem:";

/** 400: malformed JSON, a bad path or query parameter, a bad cursor or `wait`. */
export class BadRequestError extends ApiError {}
/** 401: no token, or a wrong one. */
export class UnauthorizedError extends ApiError {}
/** 404: no such execution, provider or route. */
export class NotFoundError extends ApiError {}
/** 405: a route that does not take the method. */
export class MethodNotAllowedError extends ApiError {}
/** 409: a conflict; see the two kinds below. */
export class ConflictError extends ApiError {}
/** 409 `idempotency-conflict`: an idempotency key reused with another request. */
export class IdempotencyConflictError extends ConflictError {}
/** 409 `already-ended`: cancelling an execution that has ended. */
export class AlreadyEndedError extends ConflictError {}
/** 413: a body over the server's `max_body_bytes`. */
export class PayloadTooLargeError extends ApiError {}
/** 415: a body without `content-type: application/json`. */
export class UnsupportedMediaTypeError extends ApiError {}
/** 422: well-formed JSON with unknown fields, wrong types or values out of range. */
export class ValidationError extends ApiError {}
/** 503: the database did not answer, or the daemon is not ready. */
export class UnavailableError extends ApiError {}

const BY_STATUS: Record<number, new (status: number, problem: Problem) => ApiError> = {
  400: BadRequestError,
  401: UnauthorizedError,
  404: NotFoundError,
  405: MethodNotAllowedError,
  409: ConflictError,
  413: PayloadTooLargeError,
  415: UnsupportedMediaTypeError,
  422: ValidationError,
  503: UnavailableError,
};

/** The error for an answer whose status is not a success, from its problem body. */
export async function errorFromResponse(response: Response): Promise<ApiError> {
  const text = await response.text().catch(() => "");
  let problem: Problem | undefined;
  try {
    const body: unknown = JSON.parse(text);
    if (isProblem(body)) {
      problem = { ...body, status: typeof body.status === "number" ? body.status : response.status };
    }
  } catch {
    // not JSON: made from the status below
  }
  problem ??= {
    type: "about:blank",
    title: response.statusText || `HTTP ${response.status}`,
    status: response.status,
    detail: text.trim().slice(0, 500) || `the server answered ${response.status}`,
  };
  const status = response.status;
  if (status === 409) {
    if (problem.type === PREFIX + "idempotency-conflict") return new IdempotencyConflictError(status, problem);
    if (problem.type === PREFIX + "already-ended") return new AlreadyEndedError(status, problem);
  }
  const Class = BY_STATUS[status] ?? ApiError;
  return new Class(status, problem);
}

function isProblem(value: unknown): value is Problem {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.type === "string" && typeof v.title === "string" && typeof v.detail === "string";
}
