/** How a socket test opens a connection: `SmtpConnection.make` over Node's sockets, in the caller's scope. */
import * as Effect from "effect/Effect"
import * as SmtpConnection from "../../../src/SmtpConnection.js"
import * as SmtpTransport from "../../../src/SmtpTransport.js"

/** Opens a connection with exactly `options`. */
export const connect = (options: SmtpConnection.Options) =>
  SmtpConnection.make(options).pipe(Effect.provide(SmtpTransport.layerNode))

/**
 * Opens a plaintext connection to a test server on 127.0.0.1 (`tls: "none"`), with `options` on top: what a file's
 * tests share (a client name, a timeout) is spelled out where it is called.
 */
export const connectLocal = (port: number, options: Partial<SmtpConnection.Options> = {}) =>
  connect({ host: "127.0.0.1", port, tls: "none", ...options })
