/**
 * The bench's servers, one per child process (see child.ts), so that their CPU time is not the client's:
 *
 * - `smtp-server`: smtp-server (npm) with PIPELINING and 8BITMIME, no STARTTLS, no AUTH, every recipient accepted;
 *   it counts messages and octets and throws the bodies away.
 * - `sink data` / `sink bdat`: the raw sink of sinkServer.ts, without or with CHUNKING.
 * - `proxy <port> <ms>`: the delay proxy of delayProxy.ts in front of 127.0.0.1:<port>.
 *
 * Each sends `ready` with its `port`, and answers `stats`.
 */
import type { AddressInfo } from "node:net"
import { SMTPServer } from "smtp-server"
import { fail, serve } from "./child.js"
import { startDelayProxy } from "./delayProxy.js"
import { startSinkServer } from "./sinkServer.js"

const startCountingSmtpServer = async (): Promise<void> => {
  let messages = 0
  let octets = 0
  let connections = 0
  const server = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS", "AUTH"],
    logger: false,
    onConnect(_session, callback) {
      connections++
      callback()
    },
    onData(stream, _session, callback) {
      let size = 0
      stream.on("data", (chunk: Buffer) => {
        size += chunk.length
      })
      stream.on("end", () => {
        messages++
        octets += size
        callback(null, "2.0.0 Ok: queued")
      })
    }
  })
  server.on("error", fail)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  serve(
    { port: (server.server.address() as AddressInfo).port },
    () => ({ messages, octets, connections }),
    () => new Promise((resolve) => server.close(() => resolve()))
  )
}

const main = async (): Promise<void> => {
  const [kind, ...args] = process.argv.slice(2)
  if (kind === "smtp-server") {
    await startCountingSmtpServer()
  } else if (kind === "sink") {
    const sink = await startSinkServer(args[0] === "bdat")
    serve({ port: sink.port }, () => ({ ...sink.stats() }), sink.close)
  } else if (kind === "proxy") {
    const proxy = await startDelayProxy(Number(args[0]), Number(args[1]))
    serve({ port: proxy.port }, () => ({ connections: proxy.connections() }), proxy.close)
  } else {
    throw new Error(`unknown server kind ${kind}`)
  }
}

main().catch(fail)
