/**
 * The NTLM messages and the NTLMv2 response ([MS-NLMP]), as SMTP's AUTH NTLM carries them ([MS-SMTPNTLM]). Only what
 * authentication needs: no session security (signing, sealing, key exchange) since SMTP never uses it, no MIC and no
 * channel binding. Plain functions over bytes; the exchange's order lives in `../sasl.ts`.
 */
import * as Either from "effect/Either"
import { createHmac } from "node:crypto"
import { md4 } from "./md4.js"

const SIGNATURE = Buffer.from("NTLMSSP\0", "latin1")

// [MS-NLMP] §2.2.2.5 NEGOTIATE flags.
const NEGOTIATE_UNICODE = 0x00000001
const NEGOTIATE_OEM = 0x00000002
const REQUEST_TARGET = 0x00000004
const NEGOTIATE_NTLM = 0x00000200
const NEGOTIATE_ALWAYS_SIGN = 0x00008000
const NEGOTIATE_EXTENDED_SESSIONSECURITY = 0x00080000
const NEGOTIATE_128 = 0x20000000
const NEGOTIATE_56 = 0x80000000

/** What the client asks for: either text encoding, NTLM, and the usual key sizes. */
const CLIENT_FLAGS = (NEGOTIATE_UNICODE | NEGOTIATE_OEM | REQUEST_TARGET | NEGOTIATE_NTLM | NEGOTIATE_ALWAYS_SIGN |
  NEGOTIATE_EXTENDED_SESSIONSECURITY | NEGOTIATE_128 | NEGOTIATE_56) >>> 0

const MSV_AV_EOL = 0
const MSV_AV_TIMESTAMP = 7

/** Seconds from 1601-01-01 to 1970-01-01, for Windows FILETIME. */
const FILETIME_EPOCH_OFFSET = 11_644_473_600n

/** Now as a Windows FILETIME: 100 ns ticks since 1601-01-01 UTC. */
export const now = (): bigint => (BigInt(Date.now()) + FILETIME_EPOCH_OFFSET * 1000n) * 10_000n

const hmacMd5 = (key: Uint8Array, ...data: ReadonlyArray<Uint8Array>): Buffer => {
  const mac = createHmac("md5", key)
  for (const part of data) mac.update(part)
  return mac.digest()
}

const utf16 = (text: string): Buffer => Buffer.from(text, "utf16le")

/** "DOMAIN\user" names a domain account; anything else ("user", "user@example.com") has no domain. */
export const splitUser = (username: string): { readonly user: string; readonly domain: string } => {
  const slash = username.indexOf("\\")
  return slash < 0
    ? { user: username, domain: "" }
    : { user: username.slice(slash + 1), domain: username.slice(0, slash) }
}

/** NEGOTIATE_MESSAGE ([MS-NLMP] §2.2.1.1) with no domain, workstation or version: 32 bytes. */
export const negotiateMessage = (): Uint8Array => {
  const message = Buffer.alloc(32)
  SIGNATURE.copy(message, 0)
  message.writeUInt32LE(1, 8)
  message.writeUInt32LE(CLIENT_FLAGS, 12)
  message.writeUInt32LE(32, 20) // empty DomainNameFields and WorkstationFields, pointing at the end
  message.writeUInt32LE(32, 28)
  return message
}

/** The parts of a CHALLENGE_MESSAGE the client uses. */
export interface Challenge {
  readonly flags: number
  readonly serverChallenge: Uint8Array
  /** The AV pairs, sent back unchanged inside the NTLMv2 response. */
  readonly targetInfo: Uint8Array
  /** MsvAvTimestamp, when the server sent one. */
  readonly timestamp: bigint | undefined
}

/** Whether the bytes start like a CHALLENGE_MESSAGE: the signature and message type 2. */
export const isChallenge = (bytes: Uint8Array): boolean => {
  const message = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  return message.length >= 12 && message.subarray(0, 8).equals(SIGNATURE) && message.readUInt32LE(8) === 2
}

/** Reads a CHALLENGE_MESSAGE ([MS-NLMP] §2.2.1.2), checking every field lies inside the message. */
export const parseChallenge = (bytes: Uint8Array): Either.Either<Challenge, string> => {
  const message = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  if (!isChallenge(message)) return Either.left("the server's challenge is not an NTLM CHALLENGE_MESSAGE")
  if (message.length < 32) return Either.left("the NTLM CHALLENGE_MESSAGE is truncated")
  const flags = message.readUInt32LE(20)
  const serverChallenge = message.subarray(24, 32)
  // Servers from before NTLMv2 end the message at 32 bytes, without TargetInfoFields.
  if (message.length < 48) {
    return Either.right({ flags, serverChallenge, targetInfo: Buffer.alloc(0), timestamp: undefined })
  }
  const length = message.readUInt16LE(40)
  const offset = message.readUInt32LE(44)
  if (offset + length > message.length) return Either.left("the NTLM target information lies outside the message")
  const targetInfo = message.subarray(offset, offset + length)
  let timestamp: bigint | undefined
  for (let at = 0; targetInfo.length > 0;) {
    if (at + 4 > targetInfo.length) return Either.left("the NTLM target information is not a list of AV pairs")
    const id = targetInfo.readUInt16LE(at)
    const size = targetInfo.readUInt16LE(at + 2)
    if (id === MSV_AV_EOL) break
    if (at + 4 + size > targetInfo.length) return Either.left("an NTLM AV pair runs past the target information")
    if (id === MSV_AV_TIMESTAMP && size === 8) timestamp = targetInfo.readBigUInt64LE(at + 4)
    at += 4 + size
  }
  return Either.right({ flags, serverChallenge, targetInfo, timestamp })
}

/** NTOWFv2 ([MS-NLMP] §3.3.2): HMAC-MD5 keyed by MD4 of the password, of the upper-cased user and the domain. */
export const ntowfv2 = (password: string, user: string, domain: string): Uint8Array =>
  hmacMd5(md4(utf16(password)), utf16(user.toUpperCase() + domain))

/** LMv2 response ([MS-NLMP] §3.3.2): HMAC-MD5 of both challenges, then the client challenge. */
export const lmv2Response = (
  responseKey: Uint8Array,
  serverChallenge: Uint8Array,
  clientChallenge: Uint8Array
): Uint8Array => Buffer.concat([hmacMd5(responseKey, serverChallenge, clientChallenge), clientChallenge])

/**
 * NTLMv2 response ([MS-NLMP] §3.3.2): NTProofStr, then `temp` (versions, time, client challenge, the server's AV
 * pairs). Both are returned, the proof being the part the specification's examples print.
 */
export const ntlmv2Response = (options: {
  readonly responseKey: Uint8Array
  readonly serverChallenge: Uint8Array
  readonly clientChallenge: Uint8Array
  readonly time: bigint
  readonly targetInfo: Uint8Array
}): { readonly ntProofStr: Uint8Array; readonly response: Uint8Array } => {
  const header = Buffer.alloc(28)
  header.writeUInt8(1, 0) // RespType
  header.writeUInt8(1, 1) // HiRespType
  header.writeBigUInt64LE(options.time, 8)
  Buffer.from(options.clientChallenge).copy(header, 16)
  const temp = Buffer.concat([header, options.targetInfo, Buffer.alloc(4)])
  const ntProofStr = hmacMd5(options.responseKey, options.serverChallenge, temp)
  return { ntProofStr, response: Buffer.concat([ntProofStr, temp]) }
}

/**
 * AUTHENTICATE_MESSAGE ([MS-NLMP] §2.2.1.3) for a challenge: the flags both sides agree on, LMv2 and NTLMv2 responses,
 * and the domain, user and workstation names. No version, MIC or session key: SMTP needs none of them. Fails when a
 * field outgrows its 16-bit length.
 */
export const authenticateMessage = (options: {
  readonly challenge: Challenge
  readonly password: string
  readonly username: string
  readonly workstation: string
  readonly clientChallenge: Uint8Array
  readonly time: bigint | undefined
}): Either.Either<Uint8Array, string> => {
  const { challenge } = options
  const { domain, user } = splitUser(options.username)
  const responseKey = ntowfv2(options.password, user, domain)
  const { response } = ntlmv2Response({
    responseKey,
    serverChallenge: challenge.serverChallenge,
    clientChallenge: options.clientChallenge,
    time: options.time ?? challenge.timestamp ?? now(),
    targetInfo: challenge.targetInfo
  })
  // [MS-NLMP] §3.1.5.1.2: when the server sent a timestamp, the LM response is 24 zero bytes.
  const lm = challenge.timestamp === undefined
    ? lmv2Response(responseKey, challenge.serverChallenge, options.clientChallenge)
    : Buffer.alloc(24)
  const unicode = (challenge.flags & NEGOTIATE_UNICODE) !== 0
  const text = (value: string): Buffer => unicode ? utf16(value) : Buffer.from(value, "latin1")
  let flags = (CLIENT_FLAGS & challenge.flags) | NEGOTIATE_NTLM
  flags = unicode ? (flags & ~NEGOTIATE_OEM) | NEGOTIATE_UNICODE : (flags & ~NEGOTIATE_UNICODE) | NEGOTIATE_OEM

  // Payload order as in the specification's example: domain, user, workstation, LM, NT, session key.
  const fields = [text(domain), text(user), text(options.workstation), Buffer.from(lm), Buffer.from(response)]
  // Every field's length is a 16-bit number.
  if (fields.some((field) => field.length > 0xffff)) {
    return Either.left("a name or the server's target information is too long for an NTLM message")
  }
  const header = Buffer.alloc(64)
  SIGNATURE.copy(header, 0)
  header.writeUInt32LE(3, 8)
  const fieldAt: ReadonlyArray<number> = [28, 36, 44, 12, 20] // DomainName, UserName, Workstation, Lm, Nt
  let offset = 64
  fields.forEach((field, i) => {
    header.writeUInt16LE(field.length, fieldAt[i]!)
    header.writeUInt16LE(field.length, fieldAt[i]! + 2)
    header.writeUInt32LE(offset, fieldAt[i]! + 4)
    offset += field.length
  })
  header.writeUInt32LE(offset, 56) // EncryptedRandomSessionKeyFields: empty
  header.writeUInt32LE(flags >>> 0, 60)
  return Either.right(Buffer.concat([header, ...fields]))
}
