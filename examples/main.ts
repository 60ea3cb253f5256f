/**
 * `npm start`: sends a real message through effect-smtp's protocol core to an SMTP server embedded in this process
 * (smtp-server from npm, on a free loopback port), then prints the transcript and what the server received.
 *
 * The core is sans-IO: it never touches a socket. This program is the thinnest possible I/O shell around it — a
 * `node:net` socket, the incremental reply parser, the command encoder and the DATA encoder — which shows what the
 * core does on its own. The Effect shell (`SmtpConnection`, scoped, with timeouts and typed errors) builds on the very
 * same functions.
 */
import * as Either from "effect/Either"
import * as net from "node:net"
import { SMTPServer } from "smtp-server"
import * as Capabilities from "../src/Capabilities.js"
import * as DataEncoder from "../src/DataEncoder.js"
import * as SmtpCommand from "../src/SmtpCommand.js"
import * as SmtpReply from "../src/SmtpReply.js"

const message = [
  "From: Effect SMTP <demo@example.org>",
  "To: Receiver <receiver@example.org>",
  "Subject: Hello from effect-smtp",
  "",
  "This message went through effect-smtp's protocol core.",
  ".A line starting with a dot is dot-stuffed on the wire and arrives intact.",
  "A bare LF\nand a bare CR\rboth became CRLF.",
  ""
].join("\r\n")

const startServer = async () => {
  const received: Array<{ from: string; to: Array<string>; body: string }> = []
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
        callback(null)
      })
    }
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.server.address() as net.AddressInfo).port
  return { server, port, received }
}

/** Connects and returns `send` (write a command, await its reply) and `reply` (await the next reply). */
const connect = async (port: number, transcript: Array<string>) => {
  const socket = net.connect({ host: "127.0.0.1", port })
  await new Promise<void>((resolve, reject) => socket.once("connect", resolve).once("error", reject))
  const parser = SmtpReply.makeParser()
  const ready: Array<SmtpReply.SmtpReply> = []
  const waiting: Array<(reply: SmtpReply.SmtpReply) => void> = []
  socket.on("data", (chunk: Buffer) => {
    const step = parser.push(chunk)
    if (step.error !== undefined) socket.destroy(step.error)
    for (const reply of step.replies) {
      transcript.push(...SmtpReply.format(reply).trimEnd().split("\r\n").map((line) => `S: ${line}`))
      const waiter = waiting.shift()
      if (waiter === undefined) ready.push(reply)
      else waiter(reply)
    }
  })
  const reply = () =>
    new Promise<SmtpReply.SmtpReply>((resolve) => {
      const next = ready.shift()
      if (next === undefined) waiting.push(resolve)
      else resolve(next)
    })
  const write = (bytes: Uint8Array) => new Promise<void>((resolve) => socket.write(bytes, () => resolve()))
  const send = async (command: SmtpCommand.SmtpCommand, expected: number) => {
    transcript.push(`C: ${SmtpCommand.toTranscript(command)}`)
    await write(Either.getOrThrow(SmtpCommand.encode(command)))
    const answer = await reply()
    if (answer.code !== expected) throw SmtpReply.toError(answer, SmtpCommand.verb(command))
    return answer
  }
  return { socket, reply, send, write }
}

const main = async () => {
  const { server, port, received } = await startServer()
  const transcript: Array<string> = []
  const session = await connect(port, transcript)
  try {
    await session.reply()
    const ehlo = await session.send(SmtpCommand.ehlo("client.example.org"), 250)
    const capabilities = Capabilities.fromReply(ehlo)
    await session.send(SmtpCommand.mail("demo@example.org"), 250)
    await session.send(SmtpCommand.rcpt("receiver@example.org"), 250)
    await session.send(SmtpCommand.data, 354)
    const encoder = DataEncoder.make()
    await session.write(Either.getOrThrow(encoder.push(Buffer.from(message))))
    await session.write(Either.getOrThrow(encoder.end()))
    transcript.push(`C: <message, ${Buffer.byteLength(message)} octets>`)
    const queued = await session.reply()
    if (!SmtpReply.isPositiveCompletion(queued)) throw SmtpReply.toError(queued, "DATA")
    await session.send(SmtpCommand.quit, 221)

    console.log(`Sent one message to the embedded SMTP server on 127.0.0.1:${port}.`)
    console.log(`Server capabilities: ${capabilities.entries.map((e) => e.keyword).join(", ")}\n`)
    console.log("Transcript:")
    for (const line of transcript) console.log(`  ${line}`)
    console.log("\nWhat the server received:")
    for (const mail of received) {
      console.log(`  MAIL FROM: ${mail.from}\n  RCPT TO:   ${mail.to.join(", ")}`)
      for (const line of mail.body.split("\r\n")) console.log(`  | ${line}`)
    }
  } finally {
    session.socket.destroy()
    await new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error)
  process.exitCode = 1
})
