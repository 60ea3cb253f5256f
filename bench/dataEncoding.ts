/**
 * DATA encoding: about 100 MB of message text through our encoder and through Nodemailer's `DataStream`, in 64 KiB
 * chunks, beside a chunked copy and a whole-buffer copy of the same bytes.
 */
import * as Either from "effect/Either"
import { createHash } from "node:crypto"
import { once } from "node:events"
import * as path from "node:path"
import type { Transform } from "node:stream"
import { pathToFileURL } from "node:url"
import * as DataEncoder from "../src/DataEncoder.js"
import type { Case } from "./harness.js"
import { random } from "./harness.js"

const CHUNK = 64 * 1024

/** How often each line end is used; the weights need not add up to one. */
export interface LineEnds {
  readonly crlf: number
  readonly lf: number
  readonly cr: number
}

export interface Text {
  readonly bytes: Buffer
  readonly lines: number
  readonly dotLines: number
  readonly bareLf: number
  readonly bareCr: number
  /**
   * The length the encoded text must have: one more octet per leading dot and per bare line end, and the `.CRLF`
   * terminator (the text always ends with a line end, so the encoder adds no CRLF of its own before it).
   */
  readonly encodedLength: number
}

/** Mostly ASCII words, some UTF-8 (two, three and four octets per character). */
const WORDS: ReadonlyArray<Buffer> = [
  "the",
  "of",
  "and",
  "a",
  "to",
  "in",
  "is",
  "you",
  "that",
  "it",
  "message",
  "delivery",
  "transaction",
  "server",
  "please",
  "regards",
  "attached",
  "meeting",
  "tomorrow",
  "invoice",
  "über",
  "Grüße",
  "café",
  "naïve",
  "déjà",
  "€42",
  "日本語",
  "😀"
].map((word) => Buffer.from(word, "utf8"))

/**
 * Generates about `size` octets of text: lines of 20 to 78 octets before the line end, about 5% of them starting
 * with a dot, line ends drawn by the given weights. The same seed gives the same text.
 */
export const generate = (size: number, ends: LineEnds, seed: number): Text => {
  const rnd = random(seed)
  const out = Buffer.allocUnsafe(size + 128)
  const weight = ends.crlf + ends.lf + ends.cr
  let n = 0
  let lines = 0
  let dotLines = 0
  let bareLf = 0
  let bareCr = 0
  while (n < size) {
    const start = n
    const target = 20 + Math.floor(rnd() * 59)
    if (rnd() < 0.05) {
      out[n++] = 0x2e
      dotLines++
    }
    while (true) {
      const word = WORDS[Math.floor(rnd() * WORDS.length)]!
      const space = n > start ? 1 : 0
      if (n - start + space + word.length > target) break
      if (space === 1) out[n++] = 0x20
      n += word.copy(out, n)
    }
    // Pad short lines to the target, so lengths spread over 20 to 78 octets.
    while (n - start < target) out[n++] = 0x78
    const pick = rnd() * weight
    if (pick < ends.crlf) {
      out[n++] = 0x0d
      out[n++] = 0x0a
    } else if (pick < ends.crlf + ends.lf) {
      out[n++] = 0x0a
      bareLf++
    } else {
      out[n++] = 0x0d
      bareCr++
    }
    lines++
  }
  const bytes = out.subarray(0, n)
  return { bytes, lines, dotLines, bareLf, bareCr, encodedLength: n + dotLines + bareLf + bareCr + 3 }
}

/** Nodemailer's `_transform` and `_flush`, called directly. */
interface DirectDataStream {
  push: (chunk: Buffer | null) => boolean
  _transform: (chunk: Buffer, encoding: string, done: (error?: Error | null) => void) => void
  _flush: (done: (error?: Error | null) => void) => void
}

type DataStreamClass = new() => unknown

/**
 * Loads Nodemailer's DATA encoder. It is not in the package's exports map, so it is imported by file URL.
 */
export const loadNodemailer = async (): Promise<DataStreamClass> => {
  const file = path.resolve("node_modules/nodemailer/dist/esm/smtp-connection/data-stream.js")
  const loaded = (await import(pathToFileURL(file).href)) as { readonly default?: unknown }
  if (typeof loaded.default !== "function") throw new Error(`no DataStream class in ${file}`)
  return loaded.default as DataStreamClass
}

const fail = (error: Error | null | undefined): void => {
  if (error) throw error
}

const chunked = (bytes: Buffer, f: (chunk: Buffer) => void): void => {
  for (let p = 0; p < bytes.length; p += CHUNK) f(bytes.subarray(p, p + CHUNK))
}

const copyChunked = (bytes: Buffer): number => {
  let total = 0
  chunked(bytes, (chunk) => {
    const copy = Buffer.allocUnsafe(chunk.length)
    total += chunk.copy(copy)
  })
  return total
}

const encodeOurs = (bytes: Buffer, sink: (out: Uint8Array) => void): void => {
  const encoder = DataEncoder.make()
  chunked(bytes, (chunk) => {
    const out = encoder.push(chunk)
    if (Either.isLeft(out)) throw out.left
    sink(out.right)
  })
  const tail = encoder.end()
  if (Either.isLeft(tail)) throw tail.left
  sink(tail.right)
}

/** Nodemailer's encoder without the stream machinery: its `_transform` is synchronous, so it is called directly. */
const encodeNodemailerDirect = (DataStream: DataStreamClass, bytes: Buffer, sink: (out: Buffer) => void): void => {
  const stream = new DataStream() as DirectDataStream
  stream.push = (out) => {
    if (out !== null) sink(out)
    return true
  }
  chunked(bytes, (chunk) => stream._transform(chunk, "buffer", fail))
  stream._flush(fail)
}

/** Nodemailer's encoder as Nodemailer uses it: a Transform stream, written to with backpressure, read by `data`. */
const encodeNodemailerStream = async (DataStream: DataStreamClass, bytes: Buffer): Promise<number> => {
  const stream = new DataStream() as Transform
  let total = 0
  stream.on("data", (out: Buffer) => {
    total += out.length
  })
  const ended = once(stream, "end")
  for (let p = 0; p < bytes.length; p += CHUNK) {
    if (!stream.write(bytes.subarray(p, p + CHUNK))) await once(stream, "drain")
  }
  stream.end()
  await ended
  return total
}

/**
 * Checks, outside the timed runs, that our encoder and Nodemailer's give the same bytes and the length the text
 * must encode to. Returns a short description for the log.
 */
export const verify = (DataStream: DataStreamClass, text: Text): string => {
  const ours = createHash("sha256")
  let oursLength = 0
  encodeOurs(text.bytes, (out) => {
    ours.update(out)
    oursLength += out.length
  })
  const theirs = createHash("sha256")
  let theirsLength = 0
  encodeNodemailerDirect(DataStream, text.bytes, (out) => {
    theirs.update(out)
    theirsLength += out.length
  })
  if (oursLength !== text.encodedLength || theirsLength !== text.encodedLength) {
    throw new Error(
      `encoded lengths differ: ours ${oursLength}, Nodemailer ${theirsLength}, expected ${text.encodedLength}`
    )
  }
  const digest = ours.digest("hex")
  if (digest !== theirs.digest("hex")) throw new Error("our encoder and Nodemailer's give different bytes")
  return `${oursLength} octets out, identical (sha256 ${digest.slice(0, 12)}…)`
}

/** The cases for one text: chunked copy (the baseline), whole copy, ours, Nodemailer direct, Nodemailer stream. */
export const cases = (DataStream: DataStreamClass, text: Text): ReadonlyArray<Case> => {
  const { bytes, encodedLength } = text
  const expect = (name: string, length: number) => (result: number): void => {
    if (result !== length) throw new Error(`${name}: ${result} octets out, expected ${length}`)
  }
  return [
    {
      name: "(a) Buffer copy, 64 KiB chunks",
      bytes: bytes.length,
      baseline: true,
      repeat: 5,
      run: () => copyChunked(bytes),
      verify: expect("chunked copy", bytes.length)
    },
    {
      name: "(b) Buffer.from(whole text)",
      bytes: bytes.length,
      // One run per sample: back-to-back 100 MB allocations pile up faster than the GC frees them.
      run: () => Buffer.from(bytes).length,
      verify: expect("whole copy", bytes.length)
    },
    {
      name: "(c) DataEncoder (ours)",
      bytes: bytes.length,
      run: () => {
        let total = 0
        encodeOurs(bytes, (out) => {
          total += out.length
        })
        return total
      },
      verify: expect("DataEncoder", encodedLength)
    },
    {
      name: "(d) Nodemailer DataStream, _transform",
      bytes: bytes.length,
      run: () => {
        let total = 0
        encodeNodemailerDirect(DataStream, bytes, (out) => {
          total += out.length
        })
        return total
      },
      verify: expect("Nodemailer direct", encodedLength)
    },
    {
      name: "(e) Nodemailer DataStream, stream",
      bytes: bytes.length,
      run: () => encodeNodemailerStream(DataStream, bytes),
      verify: expect("Nodemailer stream", encodedLength)
    }
  ]
}
