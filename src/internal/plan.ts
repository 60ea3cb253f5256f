/**
 * Planning a message: every check that can be made before a byte is sent (addresses, SMTPUTF8, 8BITMIME,
 * BINARYMIME, DSN, REQUIRETLS, SIZE), the choice of DATA or BDAT, and every command encoded. Pure: the engine
 * (`engine.ts`) plans each message it is given, and so does the test client.
 */
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { isAscii } from "node:buffer"
import * as BdatEncoder from "../BdatEncoder.js"
import * as Capabilities from "../Capabilities.js"
import * as DataEncoder from "../DataEncoder.js"
import * as Mailbox from "../Mailbox.js"
import * as SmtpCommand from "../SmtpCommand.js"
import { InvalidInputError, SmtpCapabilityError } from "../SmtpError.js"
import type * as SmtpSubmission from "../SmtpSubmission.js"
import * as Body from "./body.js"

/** The body, ready for the wire (in memory), or to be encoded as it streams. */
export type PreparedBody<E, R> =
  | {
    readonly _tag: "Encoded"
    readonly chunks: ReadonlyArray<Uint8Array>
    /** The body's own size, before encoding. */
    readonly octets: number
  }
  | {
    readonly _tag: "Streamed"
    /** A `Stream` or a `ReaderBody`. */
    readonly body: SmtpSubmission.Body<E, R>
    /** The server lacks 8BITMIME and the body was not declared 8-bit: an 8-bit octet ends the send. */
    readonly sevenBitOnly: boolean
  }

export interface Plan<E, R> {
  readonly method: "DATA" | "BDAT"
  readonly pipelining: boolean
  readonly allOrNothing: boolean
  readonly mail: Uint8Array
  readonly mailLine: string
  readonly recipients: ReadonlyArray<{ readonly recipient: string; readonly bytes: Uint8Array; readonly line: string }>
  readonly binary: boolean
  readonly allowLongLines: boolean
  readonly body: PreparedBody<E, R>
  /**
   * Set only for a body handed in by the caller after their own MAIL and RCPT (`SmtpConnection.data` and `bdat`):
   * whether it ends the message. Such a message has no envelope of its own to decide on.
   */
  readonly last?: boolean | undefined
}

/** The transcript line of an encoded MAIL or RCPT: the line itself, which holds no credential to redact. */
const transcriptLine = (bytes: Uint8Array): string =>
  Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength - 2).toString("utf8")

const capabilityError = (capability: SmtpCapabilityError["capability"], reason: string) =>
  Either.left(new SmtpCapabilityError({ capability, reason }))

/** Where the header section ends: after the first empty line (CRLF CRLF, or bare LF LF), or the whole message. */
const headerSection = (bytes: Uint8Array): Uint8Array => {
  const buffer = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const crlf = buffer.indexOf("\r\n\r\n")
  // A bare LF LF counts only before the first CRLF CRLF: no need to scan the body after it.
  const lf = (crlf < 0 ? buffer : buffer.subarray(0, crlf + 2)).indexOf("\n\n")
  const end = lf >= 0 ? lf : crlf
  return end < 0 ? bytes : bytes.subarray(0, end)
}

const encodeAll = (
  bytes: Uint8Array,
  method: "DATA" | "BDAT",
  binary: boolean,
  allowLongLines: boolean
): Either.Either<ReadonlyArray<Uint8Array>, InvalidInputError> => {
  if (method === "DATA") {
    // The body and its end as pieces, never joined: a body that needs no change goes out as given, without a copy.
    const encoder = DataEncoder.make({ allowLongLines })
    return Either.flatMap(
      encoder.push(bytes),
      (encoded) => Either.map(encoder.end(), (end) => encoded.length === 0 ? [end] : [encoded, end])
    )
  }
  // One BDAT LAST for the whole message: its size is known, so chunks would only cost replies.
  const encoder = BdatEncoder.make({ allowLongLines, binary, chunkSize: Number.MAX_SAFE_INTEGER })
  return Either.flatMap(encoder.push(bytes), () => Either.map(encoder.end(), (last) => last.data))
}

interface Address {
  readonly given: string
  readonly mailbox: Mailbox.Mailbox | undefined
}

/**
 * A transaction that fits in this many octets (commands and body) reaches a server in one read and is answered in one
 * write. Postfix's smtpd reads 4,096 octets at a time, and answers the envelope of a longer transaction before the rest.
 */
const ONE_READ = 4096

/**
 * BDAT or DATA for a body that could go either way, when the server offers CHUNKING. `chunking: true` and `false`
 * decide. Left to the client, BDAT goes when it saves DATA's round trip without costing one (docs/benchmarks.md,
 * "method", has the measurements):
 * - when another transaction is in flight or follows at once (`busy`): a window of BDAT transactions costs no round
 *   trip per message, and the client's next writes acknowledge the server's replies as they come;
 * - when commands are not pipelined: each waits for the reply before it, which acknowledges it;
 * - when the whole transaction fits in one read of the server (`small`).
 * A lone, longer transaction goes as DATA. As BDAT, Postfix answers it about 40 ms late: smtpd answers its envelope
 * before reading the rest, and Nagle's algorithm (smtpd sets no TCP_NODELAY) holds the last reply until the client,
 * which has nothing to send, acknowledges the first; DATA's 354 gets that acknowledgement written with the body.
 */
const chooseBdat = (chunking: boolean | undefined, busy: boolean, pipelining: boolean, small: boolean): boolean =>
  chunking === undefined ? busy || !pipelining || small : chunking

/**
 * Checks the whole message against the server and builds every command; nothing is sent. `busy`: another transaction
 * is in flight on the session or ready to follow this one at once (see `chooseBdat`).
 */
export const plan = <E, R>(
  envelope: SmtpSubmission.Envelope,
  body: SmtpSubmission.Body<E, R>,
  options: SmtpSubmission.SendOptions,
  capabilities: Capabilities.Capabilities,
  secure: boolean,
  busy: boolean
): Either.Either<Plan<E, R>, InvalidInputError | SmtpCapabilityError> => {
  // Plain code with early returns rather than `Either.gen`: this runs once per message.
  const mailParameters = envelope.mailParameters ?? {}
  const recipients = envelope.to.map((entry) =>
    typeof entry === "string"
      ? { address: entry, parameters: envelope.rcptParameters }
      : { address: entry.address, parameters: entry.parameters ?? envelope.rcptParameters }
  )
  if (recipients.length === 0) {
    return Either.left(new InvalidInputError({ field: "recipients", reason: "there is no recipient" }))
  }
  let sender: Address = { given: envelope.from, mailbox: undefined }
  if (envelope.from !== "" && envelope.from !== "<>") {
    const mailbox = Mailbox.parse(envelope.from, "MAIL FROM address")
    if (Either.isLeft(mailbox)) return Either.left(mailbox.left)
    sender = { given: envelope.from, mailbox: mailbox.right }
  }
  const rcptAddresses: Array<Address> = []
  for (const r of recipients) {
    const mailbox = Mailbox.parse(r.address, "RCPT TO address")
    if (Either.isLeft(mailbox)) return Either.left(mailbox.left)
    rcptAddresses.push({ given: r.address, mailbox: mailbox.right })
  }

  // The content: size, 8-bit octets, and 8-bit headers, known when the body is in memory.
  const inMemory = Body.inMemory(body)
  const eightBit = inMemory !== undefined && !isAscii(inMemory)
  const eightBitHeaders = eightBit && inMemory !== undefined && !isAscii(headerSection(inMemory))

  // SMTPUTF8 (RFC 6531): needed by a non-ASCII local part, or by UTF-8 in the headers. Without it, IDN domains go as
  // A-labels.
  const needsUtf8 = mailParameters.smtpUtf8 === true || eightBitHeaders ||
    [sender, ...rcptAddresses].some((a) => a.mailbox !== undefined && Mailbox.requiresSmtpUtf8(a.mailbox))
  if (needsUtf8 && !Capabilities.smtpUtf8(capabilities)) {
    return capabilityError(
      "SMTPUTF8",
      eightBitHeaders && mailParameters.smtpUtf8 !== true
        ? "the message has UTF-8 in its headers and the server does not offer SMTPUTF8"
        : "an address has a non-ASCII local part and the server does not offer SMTPUTF8"
    )
  }
  // Without SMTPUTF8 every local part is ASCII here, so only a non-ASCII domain has anything to convert.
  const wire = (address: Address, field: string): Either.Either<string, InvalidInputError> =>
    address.mailbox === undefined
      ? Either.right("")
      : needsUtf8 || Mailbox.isAscii(address.mailbox.domain)
      ? Either.right(Mailbox.format(address.mailbox))
      : Either.map(Mailbox.toAscii(address.mailbox, field), Mailbox.format)

  // BODY (RFC 6152, RFC 3030): as declared; else BINARYMIME for a body that only it can carry (NUL octets, or lines
  // over 998 octets) when the server offers it, else 8BITMIME when the content is 8-bit, or unknown and offered.
  const allowLongLines = options.allowLongLines ?? false
  const binaryOffered = Capabilities.binaryMime(capabilities) && Capabilities.chunking(capabilities)
  let declared = mailParameters.body ?? options.bodyType
  const hasNul = inMemory !== undefined &&
    Buffer.from(inMemory.buffer, inMemory.byteOffset, inMemory.byteLength).indexOf(0) >= 0
  /** The body as text for BDAT, when it was encoded to find out whether it needs BINARYMIME. */
  let asText: ReadonlyArray<Uint8Array> | undefined
  if (declared === undefined && inMemory !== undefined && binaryOffered && options.chunking !== false) {
    const text = hasNul ? undefined : encodeAll(inMemory, "BDAT", false, allowLongLines)
    if (text === undefined || Either.isLeft(text)) declared = "BINARYMIME"
    else asText = text.right
  }
  const binary = declared === "BINARYMIME"
  if (binary && !binaryOffered) {
    return capabilityError(
      "BINARYMIME",
      "the body is binary and the server does not offer BINARYMIME with CHUNKING"
    )
  }
  if (declared === undefined && hasNul) {
    return capabilityError(
      "BINARYMIME",
      "the body has NUL octets, which only BINARYMIME can carry, and the server does not offer it with CHUNKING"
    )
  }
  if (declared === "8BITMIME" && !Capabilities.eightBitMime(capabilities)) {
    return capabilityError("8BITMIME", "the body is declared 8-bit and the server does not offer 8BITMIME")
  }
  if (declared === undefined && eightBit && !Capabilities.eightBitMime(capabilities)) {
    return capabilityError("8BITMIME", "the body has 8-bit octets and the server does not offer 8BITMIME")
  }
  const bodyType: SmtpCommand.BodyType | undefined = declared ??
    (eightBit || (inMemory === undefined && Capabilities.eightBitMime(capabilities)) ? "8BITMIME" : undefined)

  // DSN (RFC 3461) and REQUIRETLS (RFC 8689) are promises the server must be able to keep.
  const usesDsn = mailParameters.ret !== undefined || mailParameters.envelopeId !== undefined ||
    recipients.some((r) => r.parameters?.notify !== undefined || r.parameters?.originalRecipient !== undefined)
  if (usesDsn && !Capabilities.dsn(capabilities)) {
    return capabilityError("DSN", "DSN parameters (RET, ENVID, NOTIFY, ORCPT) need the server's DSN extension")
  }
  if (mailParameters.requireTls === true) {
    if (!secure) return capabilityError("REQUIRETLS", "REQUIRETLS needs a TLS connection")
    if (!Capabilities.requireTls(capabilities)) {
      return capabilityError("REQUIRETLS", "the server does not offer REQUIRETLS")
    }
  }

  const pipelining = options.pipelining !== false && Capabilities.pipelining(capabilities)
  // The commands' octets, about: each address and its parameters, and the verbs around them.
  const small = inMemory !== undefined &&
    inMemory.length + 64 * (1 + recipients.length) + recipients.reduce((n, r) => n + r.address.length, 0) +
          envelope.from.length <= ONE_READ
  const method =
    binary || (Capabilities.chunking(capabilities) && chooseBdat(options.chunking, busy, pipelining, small))
      ? "BDAT"
      : "DATA"
  let chunks = method === "BDAT" ? asText : undefined
  if (inMemory !== undefined && chunks === undefined) {
    const encoded = encodeAll(inMemory, method, binary, allowLongLines)
    if (Either.isLeft(encoded)) return Either.left(encoded.left)
    chunks = encoded.right
  }
  const prepared: PreparedBody<E, R> = inMemory !== undefined
    ? { _tag: "Encoded", chunks: chunks!, octets: inMemory.length }
    : {
      _tag: "Streamed",
      body,
      sevenBitOnly: bodyType === undefined
    }

  // SIZE (RFC 1870): declared when known, and checked against the limit before anything is sent.
  const size = mailParameters.size ?? options.size ??
    (prepared._tag === "Encoded"
      ? prepared.chunks.reduce((n, c) => n + c.length, 0)
      : Body.isReaderBody(body)
      ? body.size
      : undefined)
  const limit = Capabilities.sizeLimit(capabilities)
  if (size !== undefined && Option.isSome(limit) && limit.value > 0 && size > limit.value) {
    return capabilityError("SIZE", `the message is ${size} octets and the server takes at most ${limit.value}`)
  }

  const senderOnWire = wire(sender, "MAIL FROM address")
  if (Either.isLeft(senderOnWire)) return Either.left(senderOnWire.left)
  const mail = SmtpCommand.mail(senderOnWire.right, {
    ...mailParameters,
    size: Capabilities.has(capabilities, "SIZE") ? size : undefined,
    body: bodyType,
    smtpUtf8: needsUtf8 ? true : undefined
  })
  const rcpts: Array<{ recipient: string; bytes: Uint8Array; line: string }> = []
  for (const [i, r] of recipients.entries()) {
    const recipientOnWire = wire(rcptAddresses[i]!, "RCPT TO address")
    if (Either.isLeft(recipientOnWire)) return Either.left(recipientOnWire.left)
    const bytes = SmtpCommand.encode(SmtpCommand.rcpt(recipientOnWire.right, r.parameters))
    if (Either.isLeft(bytes)) return Either.left(bytes.left)
    rcpts.push({ recipient: r.address, bytes: bytes.right, line: transcriptLine(bytes.right) })
  }
  const mailBytes = SmtpCommand.encode(mail)
  if (Either.isLeft(mailBytes)) return Either.left(mailBytes.left)
  return Either.right({
    method,
    pipelining,
    allOrNothing: options.policy === "all-or-nothing",
    mail: mailBytes.right,
    mailLine: transcriptLine(mailBytes.right),
    recipients: rcpts,
    binary,
    allowLongLines,
    body: prepared
  })
}
