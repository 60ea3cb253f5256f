/**
 * Reply parsing: a stream of about a million replies, as a client would read them from a server, parsed by the
 * incremental parser in 64 KiB chunks and in random 1–64 octet chunks, each beside a plain copy of the same bytes
 * in the same chunking.
 */
import * as SmtpReply from "../src/SmtpReply.js"
import type { Case } from "./harness.js"
import { random } from "./harness.js"

/** A Postfix-style EHLO reply of ten lines. */
const EHLO = [
  "250-mx.example.com",
  "250-PIPELINING",
  "250-SIZE 10240000",
  "250-ETRN",
  "250-STARTTLS",
  "250-AUTH PLAIN LOGIN",
  "250-ENHANCEDSTATUSCODES",
  "250-8BITMIME",
  "250-DSN",
  "250 SMTPUTF8"
].map((line) => `${line}\r\n`).join("")

const QUEUE_ID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"

/**
 * The replies of one transaction, in order: EHLO, MAIL, two RCPTs (one accepted, one rejected), DATA and the end of
 * data. The queue id varies, as it does on a real server.
 */
const transaction = (queueId: string): ReadonlyArray<string> => [
  EHLO,
  "250 2.1.0 Ok\r\n",
  "250 2.1.5 Ok\r\n",
  "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown in virtual mailbox table\r\n",
  "354 End data with <CR><LF>.<CR><LF>\r\n",
  `250 2.0.0 Ok: queued as ${queueId}\r\n`
]

export interface ReplyStream {
  readonly bytes: Buffer
  readonly replies: number
  readonly lines: number
  /** The sum of all reply codes, a cheap check that the parser read the right replies, not only enough of them. */
  readonly codeSum: number
  /** The sizes of the random small chunks, in order; they add up to `bytes.length`. */
  readonly smallChunks: Uint8Array
}

export const generate = (replies: number, maxSmallChunk: number, seed: number): ReplyStream => {
  const rnd = random(seed)
  const parts: Array<string> = []
  let lines = 0
  let codeSum = 0
  let current: ReadonlyArray<string> = []
  for (let i = 0; i < replies; i++) {
    const k = i % 6
    if (k === 0) {
      let id = ""
      for (let j = 0; j < 11; j++) id += QUEUE_ID_ALPHABET[Math.floor(rnd() * QUEUE_ID_ALPHABET.length)]
      current = transaction(id)
    }
    const reply = current[k]!
    parts.push(reply)
    lines += reply.split("\r\n").length - 1
    codeSum += Number(reply.slice(0, 3))
  }
  const bytes = Buffer.from(parts.join(""), "utf8")
  const sizes: Array<number> = []
  for (let total = 0; total < bytes.length;) {
    const size = Math.min(1 + Math.floor(rnd() * maxSmallChunk), bytes.length - total)
    sizes.push(size)
    total += size
  }
  return { bytes, replies, lines, codeSum, smallChunks: Uint8Array.from(sizes) }
}

const BIG_CHUNK = 64 * 1024

/** Copies the stream as a socket reader that keeps every chunk would: a fresh buffer and a copy per chunk. */
const copyBig = (bytes: Buffer): number => {
  let total = 0
  for (let p = 0; p < bytes.length; p += BIG_CHUNK) {
    const chunk = bytes.subarray(p, p + BIG_CHUNK)
    const copy = Buffer.allocUnsafe(chunk.length)
    total += chunk.copy(copy)
  }
  return total
}

const copySmall = (bytes: Buffer, sizes: Uint8Array): number => {
  let total = 0
  let p = 0
  for (let i = 0; i < sizes.length; i++) {
    const chunk = bytes.subarray(p, p + sizes[i]!)
    p += chunk.length
    const copy = Buffer.allocUnsafe(chunk.length)
    total += chunk.copy(copy)
  }
  return total
}

interface Tally {
  replies: number
  codeSum: number
}

const tally = (step: SmtpReply.ParseStep, into: Tally): void => {
  if (step.error !== undefined) throw step.error
  for (const reply of step.replies) {
    into.replies++
    into.codeSum += reply.code
  }
}

const parseBig = (bytes: Buffer): Tally => {
  const parser = SmtpReply.makeParser()
  const result = { replies: 0, codeSum: 0 }
  for (let p = 0; p < bytes.length; p += BIG_CHUNK) tally(parser.push(bytes.subarray(p, p + BIG_CHUNK)), result)
  if (parser.bufferedLength !== 0) throw new Error(`parser holds ${parser.bufferedLength} octets at the end`)
  return result
}

const parseSmall = (bytes: Buffer, sizes: Uint8Array): Tally => {
  const parser = SmtpReply.makeParser()
  const result = { replies: 0, codeSum: 0 }
  let p = 0
  for (let i = 0; i < sizes.length; i++) {
    const chunk = bytes.subarray(p, p + sizes[i]!)
    p += chunk.length
    tally(parser.push(chunk), result)
  }
  if (parser.bufferedLength !== 0) throw new Error(`parser holds ${parser.bufferedLength} octets at the end`)
  return result
}

/** The four cases: copy and parse, in 64 KiB chunks and in random small chunks. */
export const cases = (stream: ReplyStream, maxSmallChunk: number): {
  readonly big: ReadonlyArray<Case>
  readonly small: ReadonlyArray<Case>
} => {
  const { bytes, smallChunks } = stream
  const copied = (name: string) => (result: number): void => {
    if (result !== bytes.length) throw new Error(`${name}: copied ${result} octets, expected ${bytes.length}`)
  }
  const parsed = (name: string, parse: () => Tally): Case => ({
    name,
    bytes: bytes.length,
    items: stream.replies,
    run: () => {
      const result = parse()
      if (result.replies !== stream.replies || result.codeSum !== stream.codeSum) {
        throw new Error(
          `${name}: parsed ${result.replies} replies (code sum ${result.codeSum}), ` +
            `expected ${stream.replies} (code sum ${stream.codeSum})`
        )
      }
      return result.replies
    },
    verify: () => undefined
  })
  const small = `1–${maxSmallChunk} B chunks`
  return {
    big: [
      {
        name: "Buffer copy, 64 KiB chunks",
        bytes: bytes.length,
        baseline: true,
        repeat: 10,
        run: () => copyBig(bytes),
        verify: copied("copy")
      },
      parsed("SmtpReply parser, 64 KiB chunks", () => parseBig(bytes))
    ],
    small: [
      {
        name: `Buffer copy, ${small}`,
        bytes: bytes.length,
        baseline: true,
        repeat: 2,
        run: () => copySmall(bytes, smallChunks),
        verify: copied("copy")
      },
      parsed(`SmtpReply parser, ${small}`, () => parseSmall(bytes, smallChunks))
    ]
  }
}
