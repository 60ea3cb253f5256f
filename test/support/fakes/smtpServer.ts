import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { AddressInfo } from "node:net"
import type { SMTPServerOptions } from "smtp-server"
import { SMTPServer } from "smtp-server"

/** A message as smtp-server received it. */
export interface Received {
  readonly from: string
  readonly to: ReadonlyArray<string>
  /** The message bytes after the server removed dot-stuffing and the terminator. */
  readonly bytes: Buffer
  /** The same bytes as latin1, one character per octet. */
  readonly data: string
}

/** An in-process smtp-server (npm) on a free loopback port, with what it received. */
export interface SmtpServerFixture {
  readonly port: number
  readonly received: ReadonlyArray<Received>
  readonly close: () => Promise<void>
}

/**
 * Starts smtp-server on 127.0.0.1. Recipients whose local part starts with `reject5` get a 550, with `reject4` a 450;
 * accepted messages get `250 2.0.0 Ok: queued as TEST`. Extra smtp-server options (TLS, `secure`, disabled commands)
 * are merged in; STARTTLS is off unless `disabledCommands` says otherwise.
 */
export const startSmtpServer = async (options: Partial<SMTPServerOptions> = {}): Promise<SmtpServerFixture> => {
  const received: Array<Received> = []
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS"],
    logger: false,
    onRcptTo(address, _session, callback) {
      if (address.address.startsWith("reject5")) {
        callback(Object.assign(new Error("5.1.1 No such user"), { responseCode: 550 }))
      } else if (address.address.startsWith("reject4")) {
        callback(Object.assign(new Error("4.2.1 Mailbox busy, try later"), { responseCode: 450 }))
      } else {
        callback()
      }
    },
    onData(stream, session, callback) {
      const chunks: Array<Buffer> = []
      stream.on("data", (chunk: Buffer) => chunks.push(chunk))
      stream.on("end", () => {
        const bytes = Buffer.concat(chunks)
        received.push({
          from: session.envelope.mailFrom === false ? "" : session.envelope.mailFrom.address,
          to: session.envelope.rcptTo.map((r) => r.address),
          bytes,
          data: bytes.toString("latin1")
        })
        callback(null, "2.0.0 Ok: queued as TEST")
      })
    },
    ...options
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    port: (server.server.address() as AddressInfo).port,
    received,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

/** `startSmtpServer` for the scope: closed when the scope closes. */
export const smtpServer = (
  options: Partial<SMTPServerOptions> = {}
): Effect.Effect<SmtpServerFixture, never, Scope.Scope> =>
  Effect.acquireRelease(Effect.promise(() => startSmtpServer(options)), (server) => Effect.promise(server.close))
