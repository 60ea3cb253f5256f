/**
 * The messages the submission benchmarks send: 5,000-octet text messages with headers and CRLF lines, each a little
 * different, and the block the memory case's streamed body repeats.
 */
import * as DataEncoding from "./dataEncoding.js"

export const MESSAGE_SIZE = 5_000
export const SENDER = "sender@example.com"

/** Where Nodemailer's transports in the bench connect: a loopback port, in cleartext, as `bench.example`. */
export const nodemailerTarget = (port: number) =>
  ({ host: "127.0.0.1", port, secure: false, ignoreTLS: true, name: "bench.example" }) as const

const CRLF = Buffer.from("\r\n")

export interface Message {
  readonly from: string
  readonly to: string
  /** Exactly `MESSAGE_SIZE` octets, CRLF line ends, ending with CRLF; some lines start with a dot. */
  readonly body: Buffer
}

const pad = (n: number, width: number): string => String(n).padStart(width, "0")

/** Splits CRLF text into lines, each with its CRLF. */
const lines = (text: Buffer): Array<Buffer> => {
  const out: Array<Buffer> = []
  let start = 0
  let at: number
  while ((at = text.indexOf(CRLF, start)) >= 0) {
    out.push(text.subarray(start, at + 2))
    start = at + 2
  }
  return out
}

/** Message `i`: its own recipient, Message-ID, subject and text, always `MESSAGE_SIZE` octets. */
export const message = (i: number): Message => {
  const to = `rcpt${pad(i, 6)}@example.org`
  const header = Buffer.from(
    [
      `From: Bench Sender <${SENDER}>`,
      `To: Bench Recipient <${to}>`,
      `Subject: Quarterly figures, part ${pad(i, 6)}`,
      "Date: Tue, 07 May 2024 10:00:00 +0000",
      `Message-ID: <${pad(i, 6)}.bench@example.com>`,
      "MIME-Version: 1.0",
      "Content-Type: text/plain; charset=utf-8",
      "Content-Transfer-Encoding: 8bit",
      "",
      ""
    ].join("\r\n")
  )
  const text = lines(DataEncoding.generate(2 * MESSAGE_SIZE, { crlf: 1, lf: 0, cr: 0 }, 1_000 + i).bytes)
  const parts: Array<Buffer> = [header]
  let size = header.length
  for (const line of text) {
    // Leave room for a last line of at least 10 octets, which fills the message to its exact size.
    if (size + line.length > MESSAGE_SIZE - 10) break
    parts.push(line)
    size += line.length
  }
  parts.push(Buffer.from(`${"x".repeat(MESSAGE_SIZE - size - 2)}\r\n`))
  const body = Buffer.concat(parts)
  if (body.length !== MESSAGE_SIZE) throw new Error(`message ${i} has ${body.length} octets`)
  return { from: SENDER, to, body }
}

export const messages = (count: number): ReadonlyArray<Message> => Array.from({ length: count }, (_, i) => message(i))

/** The block the memory case's body repeats: about 64 KiB of CRLF text, about 5% of its lines starting with a dot. */
export const memoryBlock = (): DataEncoding.Text => DataEncoding.generate(64 * 1024, { crlf: 1, lf: 0, cr: 0 }, 3)
