export { LanesClient } from "./client.js";
export type {
  ClientOptions,
  RequestOptions,
  GetOptions,
  WaitOptions,
  ListOptions,
  EventsOptions,
  StreamOptions,
  ExecutionStreamOptions,
  TextStreamOptions,
} from "./client.js";
export { ExecutionStream, TextStream, StreamState, parseEventId } from "./stream.js";
export * from "./errors.js";
export * from "./types.js";
export { SseParser, readSse } from "./sse.js";
export type { SseMessage } from "./sse.js";
