/**
 * The messages and keys of SCRAM (RFC 5802; SCRAM-SHA-256 is RFC 7677), without channel binding: the client sends the
 * GS2 header "n" (it does not support channel binding), so `c=` carries only that header. Plain functions over
 * strings; the exchange's order lives in `../sasl.ts`.
 */
import * as Either from "effect/Either"
import { createHash, createHmac, pbkdf2Sync, timingSafeEqual } from "node:crypto"

/** The digests SCRAM is registered with here, by their `node:crypto` names. */
export type Hash = "sha1" | "sha256"

const hashLength: Record<Hash, number> = { sha1: 20, sha256: 32 }

/**
 * PBKDF2 runs synchronously inside a step, so a server could stall the client with an absurd iteration count; real
 * servers use 4096 (the RFCs' minimum) to a few hundred thousand.
 */
export const maxIterations = 1_000_000

/** RFC 5802 §5.1 saslname: "=" and "," are written "=3D" and "=2C". */
export const escapeName = (name: string): string => name.replace(/=/g, "=3D").replace(/,/g, "=2C")

/** RFC 5802 §7 printable: the characters a nonce may hold, %x21-2B / %x2D-7E (printable ASCII but ","). */
const PRINTABLE = /^[\x21-\x2B\x2D-\x7E]+$/

/** Strict RFC 4648 base64, padding included. */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/

export const isNonce = (nonce: string): boolean => PRINTABLE.test(nonce)

/** The parts of the server-first-message the client needs. */
export interface ServerFirst {
  readonly message: string
  readonly nonce: string
  readonly salt: Uint8Array
  readonly iterations: number
}

const describeValue = (value: string): string => JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value)

/**
 * Reads the server-first-message (RFC 5802 §7): `[m=…,]r=nonce,s=salt,i=count[,extensions]`. The nonce must extend the
 * client's, the salt must be base64 and the iteration count a whole number from 1 to `maxIterations`.
 */
export const parseServerFirst = (message: string, clientNonce: string): Either.Either<ServerFirst, string> => {
  const attributes = message.split(",")
  const [first = "", second = "", third = ""] = attributes
  if (first.startsWith("e=")) return Either.left(`the server refused the exchange: ${describeValue(first.slice(2))}`)
  if (first.startsWith("m=")) return Either.left("the server requires a SCRAM extension (m=) this client does not know")
  if (!first.startsWith("r=") || !second.startsWith("s=") || !third.startsWith("i=")) {
    return Either.left(`the server-first-message is not r=…,s=…,i=…: ${describeValue(message)}`)
  }
  const nonce = first.slice(2)
  if (!nonce.startsWith(clientNonce) || !isNonce(nonce)) {
    return Either.left("the server's nonce does not extend the client's, so the exchange could be a replay")
  }
  const salt = second.slice(2)
  if (salt.length === 0 || !BASE64.test(salt)) return Either.left(`the salt is not base64: ${describeValue(salt)}`)
  const count = third.slice(2)
  if (!/^[1-9][0-9]{0,9}$/.test(count)) {
    return Either.left(`the iteration count is not a whole number ≥ 1: ${describeValue(count)}`)
  }
  const iterations = Number(count)
  if (iterations > maxIterations) {
    return Either.left(`the iteration count ${iterations} is above this client's limit of ${maxIterations}`)
  }
  return Either.right({ message, nonce, salt: Buffer.from(salt, "base64"), iterations })
}

const hmac = (hash: Hash, key: Uint8Array, data: string): Buffer => createHmac(hash, key).update(data, "utf8").digest()

/** The client-final-message, and the server signature that proves the server knows the password. */
export interface ClientFinal {
  readonly message: string
  readonly serverSignature: Uint8Array
}

/**
 * Computes the client-final-message (RFC 5802 §3): `c=base64(gs2-header),r=nonce,p=proof`, where the proof is the
 * ClientKey XOR HMAC(StoredKey, AuthMessage); and the ServerSignature to expect in return.
 */
export const clientFinal = (options: {
  readonly hash: Hash
  readonly password: string
  readonly gs2Header: string
  readonly clientFirstBare: string
  readonly serverFirst: ServerFirst
}): ClientFinal => {
  const { hash, serverFirst } = options
  const salted = pbkdf2Sync(
    Buffer.from(options.password, "utf8"),
    serverFirst.salt,
    serverFirst.iterations,
    hashLength[hash],
    hash
  )
  const withoutProof = `c=${Buffer.from(options.gs2Header, "utf8").toString("base64")},r=${serverFirst.nonce}`
  const authMessage = `${options.clientFirstBare},${serverFirst.message},${withoutProof}`
  const clientKey = hmac(hash, salted, "Client Key")
  const storedKey = createHash(hash).update(clientKey).digest()
  const clientSignature = hmac(hash, storedKey, authMessage)
  const proof = Buffer.from(clientKey.map((byte, i) => byte ^ clientSignature[i]!))
  return {
    message: `${withoutProof},p=${proof.toString("base64")}`,
    serverSignature: hmac(hash, hmac(hash, salted, "Server Key"), authMessage)
  }
}

/**
 * Checks the server-final-message (RFC 5802 §7): `v=signature[,extensions]`, or `e=error`. Returns undefined when the
 * signature is the expected one, else why not.
 */
export const verifyServerFinal = (message: string, expected: Uint8Array): string | undefined => {
  const first = message.split(",")[0]!
  if (first.startsWith("e=")) return `the server reported an error: ${describeValue(first.slice(2))}`
  if (!first.startsWith("v=")) {
    return `the server-final-message has no signature (v=): ${describeValue(message)}`
  }
  const signature = first.slice(2)
  const received = BASE64.test(signature) ? Buffer.from(signature, "base64") : undefined
  if (received === undefined || received.length !== expected.length || !timingSafeEqual(received, expected)) {
    return "the server's signature is wrong: the server does not know the password, or something altered the exchange"
  }
  return undefined
}
