/**
 * An SMTP server embedded in the example's own process (smtp-server from npm) on a free loopback port, so the
 * examples run with no configuration. It prints nothing itself; `received` holds what it got.
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import type { AddressInfo } from "node:net"
import { SMTPServer } from "smtp-server"

/** A message as the embedded server received it. */
export interface ReceivedMessage {
  readonly from: string
  readonly to: ReadonlyArray<string>
  readonly body: string
}

/** Starts the embedded server for the scope and returns its port and the messages it received. */
export const embeddedServer: Effect.Effect<
  { readonly port: number; readonly received: ReadonlyArray<ReceivedMessage> },
  never,
  Scope.Scope
> = Effect.acquireRelease(
  Effect.promise(async () => {
    const received: Array<ReceivedMessage> = []
    const server = new SMTPServer({
      authOptional: true,
      disabledCommands: ["STARTTLS"],
      logger: false,
      onData(stream, session, callback) {
        const chunks: Array<Buffer> = []
        stream.on("data", (chunk: Buffer) => chunks.push(chunk))
        stream.on("end", () => {
          received.push({
            from: session.envelope.mailFrom === false ? "" : session.envelope.mailFrom.address,
            to: session.envelope.rcptTo.map((r) => r.address),
            body: Buffer.concat(chunks).toString("utf8")
          })
          callback(null, "2.0.0 Ok: queued as EXAMPLE")
        })
      }
    })
    await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
    return { server, port: (server.server.address() as AddressInfo).port, received }
  }),
  ({ server }) => Effect.promise(() => new Promise<void>((resolve) => server.close(() => resolve())))
)
