export { LanesClient } from "./client.js";
export type {
  ClientOptions,
  RequestOptions,
  GetOptions,
  WaitOptions,
  ListOptions,
  EventsOptions,
  StreamOptions,
} from "./client.js";
export * from "./errors.js";
export * from "./types.js";
export { SseParser, readSse } from "./sse.js";
export type { SseMessage } from "./sse.js";
