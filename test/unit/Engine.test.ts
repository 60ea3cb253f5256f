/**
 * The submission engine as a machine, without sockets: a pure peer (below) answers what the machine writes, from a
 * script, and its reply bytes reach the machine through the real reply parser in arbitrary pieces. Each test checks
 * the bytes the machine asked to write (as the peer understood them) and the results it gave.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Stream from "effect/Stream"
import * as fc from "fast-check"
import * as Capabilities from "../../src/Capabilities.js"
import * as Engine from "../../src/internal/engine.js"
import { SmtpProtocolError } from "../../src/SmtpError.js"
import * as SmtpReply from "../../src/SmtpReply.js"
import type * as SmtpSubmission from "../../src/SmtpSubmission.js"

/** What the peer answers for one message. */
interface MessageScript {
  readonly mail: number
  readonly rcpts: ReadonlyArray<number>
  /** The reply to DATA (354 to go on), unused with BDAT. */
  readonly data: number
  /** The reply to the end of data; with LMTP, one per accepted recipient. */
  readonly end: ReadonlyArray<number>
}

/** A message as the peer received it. */
class Received {
  readonly to: Array<string> = []
  readonly parts: Array<Buffer> = []
  method: "DATA" | "BDAT" | undefined = undefined
  constructor(readonly from: string) {}
  get body(): Buffer {
    return Buffer.concat(this.parts)
  }
}

const text = (code: number) => code === 354 ? "354 go ahead" : `${code} ${Math.floor(code / 100)}.0.0 scripted`

/**
 * An SMTP server reduced to what the engine must get right: it parses commands and bodies from the bytes written,
 * answers from the script, and records every violation of RFC 5321 it sees (a MAIL inside a transaction, a body it
 * never asked for, a command that is not SMTP).
 */
class Peer {
  private input = Buffer.alloc(0)
  private mode: "command" | "data" | "bdat" = "command"
  private bdatLeft = 0
  private bdatLast = false
  private inTransaction = false
  private message = -1
  private accepted = 0
  readonly received: Array<Received> = []
  readonly violations: Array<string> = []
  readonly commands: Array<string> = []
  /** Replies to send, as bytes; `override` puts others among them. */
  out = ""
  /** Replies produced so far, and replies the client has taken (set by the driver). */
  produced = 0
  fed = 0
  /** Without PIPELINING: a command before the client took every reply is a violation (RFC 5321 §4.3.1). */
  strict = false

  constructor(
    readonly script: ReadonlyArray<MessageScript>,
    readonly lmtp: boolean,
    /** Replaces the reply to the n-th command (counting from 0), to play a hostile server. */
    readonly override: (n: number, verb: string, reply: string) => string = (_, __, reply) => reply
  ) {}

  private replyTo(verb: string, reply: string) {
    this.produced++
    this.out += this.override(this.commands.length - 1, verb, reply)
      .split("\n")
      .map((line) => `${line}\r\n`)
      .join("")
  }

  receive(bytes: Uint8Array) {
    this.input = this.input.length === 0 ? Buffer.from(bytes) : Buffer.concat([this.input, bytes])
    while (true) {
      if (this.mode === "bdat") {
        const take = Math.min(this.bdatLeft, this.input.length)
        const current = this.received[this.received.length - 1]
        if (current !== undefined && this.inTransaction) {
          current.parts.push(this.input.subarray(0, take))
        }
        this.input = this.input.subarray(take)
        this.bdatLeft -= take
        if (this.bdatLeft > 0) return
        this.mode = "command"
        this.endChunk()
        continue
      }
      const eol = this.input.indexOf("\r\n")
      if (eol < 0) return
      const line = this.input.subarray(0, eol).toString("latin1")
      this.input = this.input.subarray(eol + 2)
      if (this.mode === "data") {
        if (line === ".") {
          this.mode = "command"
          this.endOfData()
        } else {
          const current = this.received[this.received.length - 1]!
          if (this.inTransaction) {
            current.parts.push(Buffer.from(`${line.startsWith(".") ? line.slice(1) : line}\r\n`, "latin1"))
          }
        }
        continue
      }
      this.command(line)
    }
  }

  private current(): MessageScript {
    return this.script[this.message]!
  }

  private command(line: string) {
    if (this.strict && this.fed < this.produced) this.violations.push(`pipelined without PIPELINING: ${line}`)
    this.commands.push(line)
    const verb = line.split(" ")[0]!
    if (verb === "MAIL") {
      if (this.inTransaction) this.violations.push(`MAIL inside a transaction: ${line}`)
      this.message++
      this.accepted = 0
      const code = this.current().mail
      this.inTransaction = code < 300
      if (this.inTransaction) {
        this.received.push(new Received(/<(.*)>/.exec(line)![1]!))
      }
      return this.replyTo(verb, text(code))
    }
    if (verb === "RCPT") {
      if (!this.inTransaction) return this.replyTo(verb, "503 5.5.1 no transaction")
      const index = this.received[this.received.length - 1]!.to.length + this.rcptRefused
      const code = this.current().rcpts[index] ?? 250
      if (code < 300) {
        this.received[this.received.length - 1]!.to.push(/<(.*)>/.exec(line)![1]!)
        this.accepted++
      } else {
        this.rcptRefused++
      }
      return this.replyTo(verb, text(code))
    }
    this.rcptRefused = 0
    if (verb === "DATA") {
      const code = !this.inTransaction ? 503 : this.current().data
      if (code === 354) {
        this.mode = "data"
        this.received[this.received.length - 1]!.method = "DATA"
      }
      return this.replyTo(verb, text(code))
    }
    if (verb === "BDAT") {
      const [, size, last] = line.split(" ")
      this.bdatLeft = Number(size)
      this.bdatLast = last === "LAST"
      this.mode = "bdat"
      if (this.inTransaction) this.received[this.received.length - 1]!.method = "BDAT"
      if (this.bdatLeft === 0) {
        this.mode = "command"
        this.endChunk()
      }
      return
    }
    if (verb === "RSET") {
      this.inTransaction = false
      return this.replyTo(verb, "250 2.0.0 reset")
    }
    this.violations.push(`not a command: ${JSON.stringify(line)}`)
  }

  private rcptRefused = 0

  private endChunk() {
    if (!this.bdatLast) return this.replyTo("BDAT", this.inTransaction ? "250 2.0.0 chunk" : "503 5.5.1 no transaction")
    this.endOfData()
  }

  private endOfData() {
    if (!this.inTransaction || this.accepted === 0) {
      this.inTransaction = false
      return this.replyTo("END", "554 5.5.1 no valid recipients")
    }
    this.inTransaction = false
    const ends = this.current().end
    const count = this.lmtp ? this.accepted : 1
    for (let i = 0; i < count; i++) this.replyTo("END", text(ends[i] ?? 250))
  }
}

const capabilities = (keywords: ReadonlyArray<string>) =>
  Capabilities.fromReply(new SmtpReply.SmtpReply({ code: 250, enhancedCode: undefined, lines: ["mx", ...keywords] }))

interface Run {
  readonly results: Array<Engine.Result<unknown>>
  readonly peer: Peer
  readonly engine: Engine.Engine<number, unknown>
  readonly writes: number
}

/**
 * Drives the machine as the Effect driver does, against `peer`; the peer's reply bytes reach the reply parser in
 * pieces cut by `cuts` (split and merged arbitrarily).
 */
const drive = (
  peer: Peer,
  submissions: ReadonlyArray<SmtpSubmission.Submission<unknown, unknown>>,
  settings: { keywords: ReadonlyArray<string>; window: number; options?: SmtpSubmission.SendOptions },
  cuts: ReadonlyArray<number> = [1 << 30]
): Run => {
  const results: Array<Engine.Result<unknown>> = []
  const keys: Array<number> = []
  const engine = new Engine.Engine<number, unknown>({
    capabilities: capabilities(settings.keywords),
    secure: false,
    lmtp: peer.lmtp,
    window: settings.window,
    options: settings.options ?? {},
    block: () => Buffer.alloc(Engine.BODY_BLOCK_SIZE)
  }, { note: () => {}, result: (key, result) => void (keys.push(key), results.push(result)) })
  const parser = SmtpReply.makeParser()
  const parsed: Array<SmtpReply.SmtpReply> = []
  let cut = 0
  let next = 0
  let writes = 0
  const write = () => {
    // What the driver checks before a write when nothing is due: the server has said nothing out of turn.
    if (engine.quiet && (parsed.length > 0 || peer.out.length > 0)) {
      engine.fail(new SmtpProtocolError({ reason: "a reply came while no command awaited one" }))
      return
    }
    const bytes = Buffer.concat(engine.takeOutput())
    writes++
    peer.receive(bytes)
    engine.written()
  }
  const read = () => {
    while (parsed.length === 0) {
      if (peer.out.length === 0) throw new Error("the machine awaits a reply the server never sends")
      const size = Math.max(1, cuts[cut++ % cuts.length]!)
      const piece = peer.out.slice(0, size)
      peer.out = peer.out.slice(size)
      const step = parser.push(Buffer.from(piece, "latin1"))
      if (step.error !== undefined) throw step.error
      parsed.push(...step.replies)
    }
    peer.fed++
    engine.reply(parsed.shift()!)
  }
  /** As the driver's `serve`: writes and reads until the machine wants more of the body (true), or not (false). */
  const serve = (): boolean => {
    for (let step = engine.next();; step = engine.next()) {
      if (step === "write") write()
      else if (step === "read") read()
      else return step === "body"
    }
  }
  for (let guard = 0; guard < 100_000; guard++) {
    const step = engine.next()
    if (step === "write") {
      write()
    } else if (step === "read") {
      read()
    } else if (step === "body") {
      const chunks = Chunk.toReadonlyArray(
        Effect.runSync(Stream.runCollect(engine.wantedBody() as Stream.Stream<Uint8Array>))
      )
      let wanted = true
      for (const chunk of chunks) {
        let at = engine.bodyChunk(chunk, 0)
        while (at < chunk.length && engine.broken === undefined) {
          write()
          if (!(wanted = serve())) break
          at = engine.bodyChunk(chunk, at)
        }
        if (!wanted || !(wanted = serve())) break
      }
      if (wanted) engine.bodyEnd()
    } else if (step === "accept") {
      if (next < submissions.length) engine.submit(next, submissions[next++]!, next < submissions.length)
      else engine.drain(true)
    } else {
      // As the driver does: after a break, what was not submitted fails with the error that broke the session.
      while (step === "broken" && next < submissions.length) {
        keys.push(next++)
        results.push(Either.left(engine.broken!))
      }
      expect(keys).toEqual([...keys].sort((a, b) => a - b))
      return { results, peer, engine, writes }
    }
  }
  throw new Error("the machine did not settle")
}

const body = (i: number) => `Subject: ${i}\r\n\r\n.line ${i}\r\nend\r\n`
const submission = (i: number, rcpts: number, streamed = false): SmtpSubmission.Submission<unknown, unknown> => ({
  envelope: { from: `s${i}@example.org`, to: Array.from({ length: rcpts }, (_, j) => `r${i}.${j}@example.org`) },
  body: streamed ? Stream.make(Buffer.from(body(i).slice(0, 5)), Buffer.from(body(i).slice(5))) : body(i)
})

/** What a message's result must be, given its script: the rules of RFC 5321 and RFC 2033 written plainly. */
const expected = (script: MessageScript, method: "DATA" | "BDAT", lmtp: boolean) => {
  if (script.mail >= 400) return { ok: false, code: script.mail }
  const accepted = script.rcpts.filter((c) => c < 300).length
  if (accepted === 0) {
    const transient = script.rcpts.find((c) => c < 500)
    return { ok: false, code: transient ?? script.rcpts[0]! }
  }
  if (method === "DATA" && script.data !== 354) return { ok: false, code: script.data }
  if (lmtp) {
    const ends = script.rcpts.filter((c) => c < 300).map((_, i) => script.end[i] ?? 250)
    const delivered = ends.filter((c) => c < 300).length
    // Refused by every recipient: at RCPT or at the end, the first 4xx of them all, else the first refusal.
    const refusals = [...script.rcpts.filter((c) => c >= 300), ...ends]
    if (delivered === 0) return { ok: false, code: refusals.find((c) => c < 500) ?? refusals[0]! }
    return { ok: true, code: ends.find((c) => c < 300)!, accepted: delivered }
  }
  const end = script.end[0] ?? 250
  return end < 300 ? { ok: true, code: end, accepted } : { ok: false, code: end }
}

const codeOf = (result: Engine.Result<unknown>) =>
  Either.isRight(result) ? result.right.response.code : (result.left as { code?: number }).code

const scriptArbitrary = (lmtp: boolean) =>
  fc.integer({ min: 1, max: 3 }).chain((rcpts) =>
    fc.record({
      mail: fc.constantFrom(250, 250, 250, 451, 550),
      rcpts: fc.array(fc.constantFrom(250, 250, 450, 550), { minLength: rcpts, maxLength: rcpts }),
      data: fc.constantFrom(354, 354, 354, 451, 554),
      end: fc.array(fc.constantFrom(250, 250, 452, 552), { minLength: lmtp ? rcpts : 1, maxLength: lmtp ? rcpts : 1 })
    })
  )

describe("the engine machine, fed replies without sockets", () => {
  it("random scripts: one result per message, in order, as the RFCs say; the peer sees no violation", () => {
    fc.assert(
      fc.property(
        fc.boolean(),
        fc.boolean(),
        fc.boolean(),
        fc.boolean(),
        fc.constantFrom(undefined, true, false),
        fc.integer({ min: 1, max: 4 }),
        fc.array(fc.integer({ min: 1, max: 40 }), { minLength: 1, maxLength: 8 }),
        fc.boolean().chain((lmtp) =>
          fc.tuple(fc.constant(lmtp), fc.array(scriptArbitrary(lmtp), { minLength: 1, maxLength: 6 }))
        ),
        (chunking, pipelining, streamed, allOrNothing, chunkingOption, window, cuts, [lmtp, script]) => {
          const keywords = [...(chunking ? ["CHUNKING"] : []), ...(pipelining ? ["PIPELINING"] : []), "8BITMIME"]
          const peer = new Peer(script, lmtp)
          peer.strict = !pipelining
          const submissions = script.map((s, i) => submission(i, s.rcpts.length, streamed))
          const policy = allOrNothing ? "all-or-nothing" as const : "partial" as const
          const run = drive(
            peer,
            submissions,
            { keywords, window, options: { policy, chunking: chunkingOption } },
            cuts
          )
          expect(peer.violations).toEqual([])
          expect(run.engine.broken).toBeUndefined()
          expect(run.results.length).toBe(script.length)
          for (const [i, s] of script.entries()) {
            // BDAT when offered and asked for. Left to the engine: a small body in memory always goes as BDAT, as
            // does a message another follows at once, or one sent without pipelining; the last streamed one goes as
            // BDAT only if an earlier one is still in flight, which the cuts decide.
            const followed = i < script.length - 1
            const seen = peer.received.find((r) => r.from === `s${i}@example.org`)?.method
            const auto = !streamed || followed || !pipelining ? "BDAT" : seen ?? "DATA"
            const method = !chunking ? "DATA" : chunkingOption === undefined ? auto : chunkingOption ? "BDAT" : "DATA"
            const rule = expected(s, method, lmtp)
            const result = run.results[i]!
            const refusedRcpt = s.mail < 400 && allOrNothing && s.rcpts.some((c) => c >= 400) &&
              s.rcpts.some((c) => c < 300)
            if (refusedRcpt) {
              // All-or-nothing: the first refusal fails the message before any data goes.
              expect(Either.isLeft(result)).toBe(true)
              expect(codeOf(result)).toBe(s.rcpts.find((c) => c >= 400))
              continue
            }
            expect({ i, ok: Either.isRight(result), code: codeOf(result) }).toEqual({ i, ok: rule.ok, code: rule.code })
            if (Either.isRight(result)) {
              expect(result.right.accepted.length).toBe(rule.accepted)
              expect(result.right.method).toBe(method)
            }
          }
          // Every message the peer took whole has the exact body; none the engine did not mean to send.
          for (const message of peer.received) {
            if (message.method === undefined) continue
            const i = Number(/^s(\d+)@/.exec(message.from)![1])
            if (message.body.length > 0) expect(message.body.toString("latin1")).toBe(body(i))
          }
        }
      ),
      { numRuns: 400 }
    )
  })

  it("a streamed body larger than the block goes in several chunks; without PIPELINING each is answered first", () => {
    for (const [pipelining, chunking] of [[false, true], [true, true], [false, false]] as const) {
      const line = "0123456789".repeat(7) + "\r\n"
      const big = Buffer.from(`Subject: big\r\n\r\n${line.repeat(40_000)}`)
      const peer = new Peer([{ mail: 250, rcpts: [250], data: 354, end: [250] }], false)
      peer.strict = !pipelining
      const keywords = [...(pipelining ? ["PIPELINING"] : []), ...(chunking ? ["CHUNKING"] : [])]
      const run = drive(
        peer,
        [{ envelope: { from: "s0@example.org", to: ["r@example.org"] }, body: Stream.make(big) }],
        { keywords, window: 1, options: { chunking: true } }
      )
      expect(peer.violations).toEqual([])
      expect(Either.isRight(run.results[0]!)).toBe(true)
      expect(peer.received[0]!.body.equals(big)).toBe(true)
      if (chunking) expect(peer.commands.filter((c) => c.startsWith("BDAT")).length).toBeGreaterThan(2)
    }
  })

  it("a positive reply to DATA other than 354 is a protocol violation: the session breaks, nothing more is written", () => {
    for (const fault of ["250 2.0.0 ok", "220 hello", "334 VXNlcm5hbWU6"]) {
      const script = [0, 1, 2].map(() => ({ mail: 250, rcpts: [250], data: 354, end: [250] }))
      // The 4th command is the first DATA (MAIL, RCPT, DATA).
      const peer = new Peer(script, false, (n, verb, reply) => verb === "DATA" && n === 2 ? fault : reply)
      const run = drive(peer, [0, 1, 2].map((i) => submission(i, 1)), { keywords: ["PIPELINING"], window: 4 })
      expect(run.engine.broken?._tag).toBe("SmtpProtocolError")
      expect(run.results.map((r) => Either.isLeft(r) ? (r.left as { _tag: string })._tag : "sent")).toEqual([
        "SmtpProtocolError",
        "SmtpProtocolError",
        "SmtpProtocolError"
      ])
      expect(peer.received[0]!.body.length).toBe(0)
      expect(peer.commands).toEqual(["MAIL FROM:<s0@example.org>", "RCPT TO:<r0.0@example.org>", "DATA"])
    }
  })

  it("a reply of a class that makes no sense for its command breaks the session, at every step", () => {
    const faults = [["MAIL", "354 go"], ["RCPT", "334 x"], ["END", "354 go"], ["BDAT", "100 x"]] as const
    for (const [verb, fault] of faults) {
      const script = [{ mail: 250, rcpts: [250], data: 354, end: [250] }]
      const peer = new Peer(script, false, (_, v, reply) => v === verb ? fault : reply)
      const keywords = verb === "BDAT" ? ["PIPELINING", "CHUNKING"] : ["PIPELINING"]
      const streamed = verb === "BDAT"
      const run = drive(peer, [submission(0, 1, streamed)], {
        keywords,
        window: 1,
        options: verb === "BDAT" ? { chunking: true } : {}
      })
      if (verb === "BDAT") {
        // A streamed body's last BDAT is its only chunk here: answered by the end-of-data rule.
        expect(run.results.length).toBe(1)
        continue
      }
      expect(run.engine.broken?._tag).toBe("SmtpProtocolError")
      expect(run.results.length).toBe(1)
      expect(Either.isLeft(run.results[0]!)).toBe(true)
    }
  })

  it("a reply while nothing is due breaks the session", () => {
    const peer = new Peer([{ mail: 250, rcpts: [250], data: 354, end: [250] }], false)
    const run = drive(peer, [submission(0, 1)], { keywords: ["PIPELINING"], window: 1 })
    expect(Either.isRight(run.results[0]!)).toBe(true)
    run.engine.reply(new SmtpReply.SmtpReply({ code: 250, enhancedCode: undefined, lines: ["extra"] }))
    expect(run.engine.broken?._tag).toBe("SmtpProtocolError")
  })

  it("a 421 anywhere ends the session: the message at hand and every later one fail with it", () => {
    for (const at of [0, 1, 2, 3, 4]) {
      const script = [0, 1].map(() => ({ mail: 250, rcpts: [250], data: 354, end: [250] }))
      const peer = new Peer(script, false, (n, _, reply) => n === at ? "421 4.4.2 closing" : reply)
      const run = drive(peer, [0, 1].map((i) => submission(i, 1)), { keywords: ["PIPELINING"], window: 2 })
      expect(run.engine.broken?._tag).toBe("SmtpTransientError")
      expect(run.results.length).toBe(2)
      const first = run.results[0]!
      if (at <= 3) expect(codeOf(first)).toBe(at === 3 ? 250 : 421)
      expect(codeOf(run.results[1]!)).toBe(421)
    }
  })

  it("LMTP: one reply per accepted recipient after the end of data, each filed as that recipient's delivery", () => {
    const script = [{ mail: 250, rcpts: [250, 550, 250, 250], data: 354, end: [250, 452, 250] }]
    const peer = new Peer(script, true)
    const run = drive(peer, [submission(0, 4)], { keywords: ["PIPELINING"], window: 1 })
    const result = run.results[0]!
    expect(Either.isRight(result)).toBe(true)
    if (Either.isRight(result)) {
      expect(result.right.accepted.map((a) => [a.recipient, a.delivery?.code])).toEqual([
        ["r0.0@example.org", 250],
        ["r0.3@example.org", 250]
      ])
      expect(result.right.rejected.map((r) => [r.recipient, r.error.code])).toEqual([
        ["r0.1@example.org", 550],
        ["r0.2@example.org", 452]
      ])
    }
  })

  it("after DATA is refused, RSET goes before the next MAIL, and at the end of the batch", () => {
    const script = [{ mail: 250, rcpts: [250], data: 451, end: [250] }, { mail: 250, rcpts: [250], data: 554, end: [] }]
    const peer = new Peer(script, false)
    const run = drive(peer, [submission(0, 1), submission(1, 1)], { keywords: ["PIPELINING"], window: 2 })
    expect(peer.violations).toEqual([])
    expect(peer.commands.filter((c) => c === "RSET").length).toBe(2)
    expect(run.results.map(codeOf)).toEqual([451, 554])
  })

  it("QUIT is legal unless a DATA body is open: inBody from DATA until its end is queued, or its refusal", () => {
    const peer = new Peer([{ mail: 250, rcpts: [250], data: 354, end: [250] }], false)
    const engine = new Engine.Engine<number, unknown>({
      capabilities: capabilities(["PIPELINING"]),
      secure: false,
      lmtp: false,
      window: 1,
      options: {},
      block: () => Buffer.alloc(Engine.BODY_BLOCK_SIZE)
    }, { note: () => {}, result: () => {} })
    engine.submit(0, submission(0, 1, true))
    expect(engine.next()).toBe("write")
    expect(engine.inBody).toBe(true)
    peer.receive(Buffer.concat(engine.takeOutput()))
    engine.written()
    expect(engine.outstanding).toBe(3)
    const parser = SmtpReply.makeParser()
    for (const reply of parser.push(Buffer.from(peer.out, "latin1")).replies) {
      expect(engine.next()).toBe("read")
      engine.reply(reply)
    }
    peer.out = ""
    expect(engine.next()).toBe("body")
    expect(engine.inBody).toBe(true)
    engine.bodyChunk(Buffer.from("Subject: x\r\n\r\nhi\r\n"), 0)
    engine.bodyEnd()
    expect(engine.inBody).toBe(false)
    expect(engine.next()).toBe("write")
  })
})
