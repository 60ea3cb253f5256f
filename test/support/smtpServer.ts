import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { AddressInfo } from "node:net"
import type { SMTPServerOptions } from "smtp-server"
import { SMTPServer } from "smtp-server"

/** A message as smtp-server received it. */
export interface Received {
  readonly from: string
  readonly to: ReadonlyArray<string>
  /** The message bytes after the server removed dot-stuffing and the terminator, as latin1. */
  readonly data: string
}

/** An in-process smtp-server (npm) on a free loopback port, with what it received. */
export interface SmtpServerFixture {
  readonly port: number
  readonly received: ReadonlyArray<Received>
}

/**
 * Starts smtp-server on 127.0.0.1 for the scope. Recipients whose local part starts with `reject5` get a 550, with
 * `reject4` a 450. Extra smtp-server options (TLS, `secure`, hidden commands) are merged in.
 */
export const smtpServer = (
  options: Partial<SMTPServerOptions> = {}
): Effect.Effect<SmtpServerFixture, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.promise(async () => {
      const received: Array<Received> = []
      const server = new SMTPServer({
        authOptional: true,
        disabledCommands: ["STARTTLS"],
        logger: false,
        onRcptTo(address, _session, callback) {
          if (address.address.startsWith("reject5")) {
            callback(Object.assign(new Error("5.1.1 No such user"), { responseCode: 550 }))
          } else if (address.address.startsWith("reject4")) {
            callback(Object.assign(new Error("4.2.0 Mailbox busy"), { responseCode: 450 }))
          } else {
            callback()
          }
        },
        onData(stream, session, callback) {
          const chunks: Array<Buffer> = []
          stream.on("data", (chunk: Buffer) => chunks.push(chunk))
          stream.on("end", () => {
            received.push({
              from: session.envelope.mailFrom === false ? "" : session.envelope.mailFrom.address,
              to: session.envelope.rcptTo.map((r) => r.address),
              data: Buffer.concat(chunks).toString("latin1")
            })
            callback(null, "2.0.0 Ok: queued as TEST")
          })
        },
        ...options
      })
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
      return { server, port: (server.server.address() as AddressInfo).port, received }
    }),
    ({ server }) => Effect.promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
  ).pipe(Effect.map(({ port, received }) => ({ port, received })))
