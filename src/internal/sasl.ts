/**
 * SASL mechanisms for SMTP AUTH (RFC 4954), as sans-IO state machines: bytes in, bytes out; no sockets, timers or
 * fibers. The shell that drives one sends `AUTH <name>` with the exchange's initial response when it has one, passes
 * each 334 challenge (base64-decoded) to `step`, writes each `Respond` (base64-encoded), cancels with "*" on `Fail`, and
 * calls `finish` on the 235 reply.
 *
 * Rules every exchange here follows:
 * - A mechanism whose client speaks first (PLAIN, XOAUTH2, OAUTHBEARER, SCRAM, NTLM) answers an empty first challenge
 *   with its initial response, so the shell may hold it back (RFC 4954 §4: when the AUTH line would be too long).
 * - After a `Fail`, every later `step` fails the same way and `finish` returns that reason.
 * - `step` and `finish` never throw; a `start` that cannot begin (a password SCRAM cannot prepare, a NUL for PLAIN, an
 *   OAuth mechanism given a password) is a `Left` with a reason the user can act on, before anything is sent.
 */
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import { createHmac, getHashes, randomBytes } from "node:crypto"
import * as Ntlm from "./sasl/ntlm.js"
import { saslprep } from "./sasl/saslprep.js"
import * as Scram from "./sasl/scram.js"

/**
 * What a mechanism does with a challenge: answer it, or give up (the shell then cancels with "*" and fails with a
 * protocol error carrying the reason).
 *
 * @since 0.1.0
 * @category models
 */
export type Step =
  | { readonly _tag: "Respond"; readonly response: Redacted.Redacted<Uint8Array> }
  | { readonly _tag: "Fail"; readonly reason: string }

/**
 * One authentication attempt of a mechanism.
 *
 * @since 0.1.0
 * @category models
 */
export interface Exchange {
  /** The initial response to send with AUTH (RFC 4954 §4), or undefined when the mechanism waits for a challenge. */
  readonly initialResponse: Redacted.Redacted<Uint8Array> | undefined
  /** Given a decoded 334 challenge, what to answer. */
  readonly step: (challenge: Uint8Array) => Step
  /**
   * On the 235 reply: undefined when the server has proved itself (or the mechanism has nothing to prove), else why
   * not. SCRAM's server-final-message normally arrives as a last 334 challenge; a server that sends it as additional
   * data with the success instead can have it checked here.
   */
  readonly finish: (additionalData?: Uint8Array) => string | undefined
}

/**
 * What a mechanism signs in with.
 *
 * @since 0.1.0
 * @category models
 */
export type Credential = "password" | "token"

/**
 * The user and their secret: a password, or an OAuth 2.0 access token for XOAUTH2 and OAUTHBEARER.
 *
 * @since 0.1.0
 * @category models
 */
export type Credentials =
  | { readonly username: string; readonly password: Redacted.Redacted<string> }
  | { readonly username: string; readonly token: Redacted.Redacted<string> }

/**
 * What a mechanism may use besides the credentials. The last three exist for tests, which must reproduce the
 * published examples.
 *
 * @since 0.1.0
 * @category models
 */
export interface StartOptions {
  /** Act as this identity (RFC 4422 §3.4.1) if the server allows it: PLAIN, SCRAM and OAUTHBEARER send it. */
  readonly authorizationId?: string | undefined
  /** The server's host name, which OAUTHBEARER sends so the token can be checked against it (RFC 7628 §3.1). */
  readonly host?: string | undefined
  /** The server's port, which OAUTHBEARER sends with the host. */
  readonly port?: number | undefined
  /** The workstation name NTLM reports; none by default. */
  readonly workstation?: string | undefined
  /** SCRAM's client nonce, printable ASCII without ","; by default 24 random bytes in base64. */
  readonly nonce?: string | undefined
  /** Where random bytes come from: NTLM's client challenge, SCRAM's nonce. By default `crypto.randomBytes`. */
  readonly random?: ((size: number) => Uint8Array) | undefined
  /** NTLMv2's time, a Windows FILETIME (100 ns ticks since 1601); by default the server's timestamp, else now. */
  readonly timestamp?: bigint | undefined
}

/**
 * @since 0.1.0
 * @category models
 */
export type StartInput = Credentials & StartOptions

/**
 * A SASL mechanism.
 *
 * @since 0.1.0
 * @category models
 */
export interface Mechanism {
  /** The registered name, upper case: "PLAIN", "SCRAM-SHA-256", … */
  readonly name: string
  /** Relative strength, for choosing the strongest mechanism both sides support: higher is stronger. */
  readonly strength: number
  /** Whether an eavesdropper on a connection without TLS would learn the secret itself (or a reusable token). */
  readonly exposesCredentialsInClear: boolean
  /** Whether the mechanism signs in with a password or an OAuth access token. */
  readonly credential: Credential
  /** Begins an exchange, or says why it cannot with these credentials. */
  readonly start: (input: StartInput) => Either.Either<Exchange, string>
}

const EMPTY = new Uint8Array(0)

const respond = (bytes: Uint8Array): Step => ({ _tag: "Respond", response: Redacted.make(bytes) })

const fail = (reason: string): Step => ({ _tag: "Fail", reason })

const utf8 = (text: string): Uint8Array => Buffer.from(text, "utf8")

/** The bytes as UTF-8 text, or undefined when they are not UTF-8. */
const fromUtf8 = (bytes: Uint8Array): string | undefined => {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes)
  } catch {
    return undefined
  }
}

const describeError = (error: unknown): string => error instanceof Error ? error.message : String(error)

const LONE_SURROGATE = /\p{Cs}/u

/**
 * Why one of the texts cannot be sent, or undefined. A lone surrogate would be written as U+FFFD and silently change
 * the secret; `forbidden` is what the mechanism's own framing cannot carry.
 */
const unsendable = (
  mechanism: string,
  texts: Readonly<Record<string, string | undefined>>,
  forbidden?: { readonly pattern: RegExp; readonly what: string }
): string | undefined => {
  for (const [field, text] of Object.entries(texts)) {
    if (text === undefined) continue
    if (LONE_SURROGATE.test(text)) return `${mechanism}: the ${field} is not well-formed Unicode (a lone surrogate)`
    if (forbidden !== undefined && forbidden.pattern.test(text)) {
      return `${mechanism} cannot carry ${forbidden.what} in the ${field}`
    }
  }
  return undefined
}

const check = (problem: string | undefined): Either.Either<void, string> =>
  problem === undefined ? Either.void : Either.left(problem)

/** The secret the mechanism needs, unwrapped for the wire, or why the credentials do not fit it. */
const secretOf = (mechanism: string, credential: Credential, input: StartInput): Either.Either<string, string> => {
  if (credential === "password") {
    return "password" in input
      ? Either.right(Redacted.value(input.password))
      : Either.left(`${mechanism} signs in with a password, not an OAuth access token`)
  }
  return "token" in input
    ? Either.right(Redacted.value(input.token))
    : Either.left(`${mechanism} signs in with an OAuth 2.0 access token, not a password`)
}

const randomOf = (input: StartInput): (size: number) => Uint8Array => input.random ?? ((size) => randomBytes(size))

/** Holds an exchange to the rules in the module comment: a failure is final, and nothing throws. */
const guarded = (mechanism: string, exchange: Exchange): Exchange => {
  let failure: string | undefined
  return {
    initialResponse: exchange.initialResponse,
    step: (challenge) => {
      if (failure === undefined) {
        try {
          const next = exchange.step(challenge)
          if (next._tag === "Respond") return next
          failure = next.reason
        } catch (error) {
          failure = `${mechanism} could not answer the server's challenge: ${describeError(error)}`
        }
      }
      return fail(failure)
    },
    finish: (additionalData) => {
      if (failure !== undefined) return failure
      try {
        return exchange.finish(additionalData)
      } catch (error) {
        return `${mechanism} could not check the server's success: ${describeError(error)}`
      }
    }
  }
}

const make = (mechanism: Mechanism): Mechanism => {
  const name = mechanism.name.toUpperCase()
  return {
    ...mechanism,
    name,
    start: (input) => {
      try {
        return Either.map(mechanism.start(input), (exchange) => guarded(name, exchange))
      } catch (error) {
        return Either.left(`${name} could not start: ${describeError(error)}`)
      }
    }
  }
}

/** An exchange whose whole answer is its initial response, which also answers the first challenge if one comes. */
const single = (mechanism: string, message: Uint8Array): Exchange => {
  let answered = false
  return {
    initialResponse: Redacted.make(message),
    step: () => {
      if (answered) return fail(`${mechanism}: the server sent another challenge after the credentials`)
      answered = true
      return respond(message)
    },
    finish: () => undefined
  }
}

/**
 * PLAIN (RFC 4616): `authzid NUL authcid NUL password` in UTF-8, as the initial response. The strings are sent as
 * given (servers compare them as they are), so none of them may contain NUL.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const plain: Mechanism = make({
  name: "PLAIN",
  strength: 20,
  exposesCredentialsInClear: true,
  credential: "password",
  start: (input) =>
    Either.gen(function*() {
      const password = yield* secretOf("PLAIN", "password", input)
      const authorizationId = input.authorizationId ?? ""
      yield* check(
        unsendable("PLAIN", { "user name": input.username, password, "authorization identity": authorizationId }, {
          pattern: /\0/,
          what: "a NUL character"
        })
      )
      return single("PLAIN", utf8(`${authorizationId}\0${input.username}\0${password}`))
    })
})

/**
 * LOGIN (draft-murchison-sasl-login, [MS-XLOGIN]): the user name, then the password, each in answer to a challenge.
 * The challenges' text ("Username:", "Password:", or anything else) is not read: answers go by order, as [MS-XLOGIN]
 * §3.1.5.1 allows.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const login: Mechanism = make({
  name: "LOGIN",
  strength: 10,
  exposesCredentialsInClear: true,
  credential: "password",
  start: (input) =>
    Either.gen(function*() {
      const password = yield* secretOf("LOGIN", "password", input)
      yield* check(unsendable("LOGIN", { "user name": input.username, password }))
      const answers = [utf8(input.username), utf8(password)]
      let next = 0
      return {
        initialResponse: undefined,
        step: () =>
          next < answers.length
            ? respond(answers[next++]!)
            : fail("LOGIN: the server sent a third challenge, after the user name and the password"),
        finish: () => undefined
      }
    })
})

/**
 * CRAM over a digest (RFC 2195 for MD5; CRAM-SHA1 and CRAM-SHA256 the same with another HMAC): the answer to the
 * server's one challenge is `user SP lowercase-hex(HMAC(password, challenge))`. The digest is a `node:crypto` name.
 *
 * @since 0.1.0
 * @category constructors
 */
export const cram = (digest: string, strength: number): Mechanism => {
  const name = `CRAM-${digest.toUpperCase()}`
  const algorithm = digest.toLowerCase()
  return make({
    name,
    strength,
    exposesCredentialsInClear: false,
    credential: "password",
    start: (input) =>
      Either.gen(function*() {
        if (!getHashes().includes(algorithm)) return yield* Either.left(`${name}: this Node.js has no ${digest} digest`)
        const password = yield* secretOf(name, "password", input)
        yield* check(unsendable(name, { "user name": input.username, password }))
        let answered = false
        return {
          initialResponse: undefined,
          step: (challenge) => {
            if (answered) return fail(`${name}: the server sent a second challenge`)
            if (challenge.length === 0) return fail(`${name}: the server's challenge is empty`)
            answered = true
            const mac = createHmac(algorithm, utf8(password)).update(challenge).digest("hex")
            return respond(utf8(`${input.username} ${mac}`))
          },
          finish: () => undefined
        }
      })
  })
}

/**
 * CRAM-MD5 (RFC 2195).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const cramMd5: Mechanism = cram("MD5", 50)

/**
 * CRAM-SHA1.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const cramSha1: Mechanism = cram("SHA1", 55)

/**
 * CRAM-SHA256.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const cramSha256: Mechanism = cram("SHA256", 60)

/** The first byte that is not white space opens a JSON object: OAuth error challenges are JSON (RFC 7628 §3.2.2). */
const isJsonObject = (bytes: Uint8Array): boolean => {
  const first = bytes.find((byte) => byte !== 0x20 && byte !== 0x09 && byte !== 0x0d && byte !== 0x0a)
  return first === 0x7b
}

/**
 * An OAuth bearer exchange: the token in the initial response. The server reports a bad token with a JSON challenge,
 * which the client must answer (with `acknowledgement`) to get the final failure reply.
 */
const bearer = (mechanism: string, message: Uint8Array, acknowledgement: Uint8Array): Exchange => {
  let sent = false
  let rejected = false
  return {
    initialResponse: Redacted.make(message),
    step: (challenge) => {
      if (!rejected && isJsonObject(challenge)) {
        rejected = true
        return respond(acknowledgement)
      }
      if (!sent && !rejected) {
        sent = true
        return respond(message)
      }
      return fail(`${mechanism}: the server sent an unexpected challenge`)
    },
    finish: () => undefined
  }
}

const CONTROL_A = /\x01/

/**
 * XOAUTH2 (Google's and Microsoft's format): `user=… ^A auth=Bearer … ^A ^A`. To a JSON error challenge the client
 * answers with an empty response, and the server ends with its failure reply.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const xoauth2: Mechanism = make({
  name: "XOAUTH2",
  strength: 25,
  exposesCredentialsInClear: true,
  credential: "token",
  start: (input) =>
    Either.gen(function*() {
      const token = yield* secretOf("XOAUTH2", "token", input)
      yield* check(unsendable("XOAUTH2", { "user name": input.username, token }, { pattern: CONTROL_A, what: "^A" }))
      return bearer("XOAUTH2", utf8(`user=${input.username}\x01auth=Bearer ${token}\x01\x01`), EMPTY)
    })
})

/**
 * OAUTHBEARER (RFC 7628): the GS2 header `n,a=<user>,` then `^A`-separated key/value pairs (host and port when
 * given, then `auth=Bearer …`) and `^A^A`. To a JSON error challenge the client answers with a single ^A
 * (RFC 7628 §3.2.3), and the server ends with its failure reply.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const oauthBearer: Mechanism = make({
  name: "OAUTHBEARER",
  strength: 30,
  exposesCredentialsInClear: true,
  credential: "token",
  start: (input) =>
    Either.gen(function*() {
      const token = yield* secretOf("OAUTHBEARER", "token", input)
      const identity = input.authorizationId ?? input.username
      yield* check(unsendable("OAUTHBEARER", { "user name": identity, token, host: input.host }, {
        pattern: CONTROL_A,
        what: "^A"
      }))
      const { port } = input
      if (port !== undefined && !(Number.isInteger(port) && port >= 0 && port <= 65535)) {
        return yield* Either.left(`OAUTHBEARER: the port ${port} is not a TCP port`)
      }
      const header = identity === "" ? "n,," : `n,a=${Scram.escapeName(identity)},`
      const host = input.host === undefined ? "" : `\x01host=${input.host}`
      const portPair = port === undefined ? "" : `\x01port=${port}`
      return bearer(
        "OAUTHBEARER",
        utf8(`${header}${host}${portPair}\x01auth=Bearer ${token}\x01\x01`),
        Uint8Array.of(0x01)
      )
    })
})

/** The text SASLprep makes of a SCRAM string, or why it cannot be used. */
const prepared = (mechanism: string, field: string, text: string): Either.Either<string, string> =>
  Either.mapLeft(saslprep(text), (reason) => `${mechanism} cannot use this ${field}: ${reason}`)

type ScramState =
  | { readonly _tag: "AwaitingServerFirst"; readonly resent: boolean }
  | { readonly _tag: "AwaitingServerFinal"; readonly serverSignature: Uint8Array }
  | { readonly _tag: "Verified" }

/**
 * SCRAM over a hash (RFC 5802, RFC 7677), without channel binding. The user name, password and authorization identity
 * are prepared with SASLprep; the server must prove it knows the password with the `v=` of its final message, or the
 * exchange fails even if the server says 235.
 */
const scram = (name: string, hash: Scram.Hash, strength: number): Mechanism =>
  make({
    name,
    strength,
    exposesCredentialsInClear: false,
    credential: "password",
    start: (input) =>
      Either.gen(function*() {
        const password = yield* prepared(name, "password", yield* secretOf(name, "password", input))
        const username = yield* prepared(name, "user name", input.username)
        const authorizationId = input.authorizationId === undefined
          ? undefined
          : yield* prepared(name, "authorization identity", input.authorizationId)
        const nonce = input.nonce ?? Buffer.from(randomOf(input)(24)).toString("base64")
        if (!Scram.isNonce(nonce)) return yield* Either.left(`${name}: the nonce must be printable ASCII without ","`)

        // RFC 5802 §7: gs2-header "n" says the client does not support channel binding.
        const gs2Header = authorizationId === undefined ? "n,," : `n,a=${Scram.escapeName(authorizationId)},`
        const clientFirstBare = `n=${Scram.escapeName(username)},r=${nonce}`
        const clientFirst = utf8(gs2Header + clientFirstBare)
        const verify = (message: Uint8Array, serverSignature: Uint8Array): string | undefined => {
          const text = fromUtf8(message)
          if (text === undefined) return `${name}: the server-final-message is not UTF-8`
          const problem = Scram.verifyServerFinal(text, serverSignature)
          return problem === undefined ? undefined : `${name}: ${problem}`
        }

        let state: ScramState = { _tag: "AwaitingServerFirst", resent: false }
        return {
          initialResponse: Redacted.make(clientFirst),
          step: (challenge) => {
            switch (state._tag) {
              case "AwaitingServerFirst": {
                if (challenge.length === 0 && !state.resent) {
                  state = { _tag: "AwaitingServerFirst", resent: true }
                  return respond(clientFirst)
                }
                const text = fromUtf8(challenge)
                if (text === undefined) return fail(`${name}: the server-first-message is not UTF-8`)
                const serverFirst = Scram.parseServerFirst(text, nonce)
                if (Either.isLeft(serverFirst)) return fail(`${name}: ${serverFirst.left}`)
                const final = Scram.clientFinal({
                  hash,
                  password,
                  gs2Header,
                  clientFirstBare,
                  serverFirst: serverFirst.right
                })
                state = { _tag: "AwaitingServerFinal", serverSignature: final.serverSignature }
                return respond(utf8(final.message))
              }
              case "AwaitingServerFinal": {
                const problem = verify(challenge, state.serverSignature)
                if (problem !== undefined) return fail(problem)
                state = { _tag: "Verified" }
                return respond(EMPTY)
              }
              case "Verified":
                return fail(`${name}: the server sent a challenge after the exchange was complete`)
            }
          },
          finish: (additionalData) => {
            switch (state._tag) {
              case "Verified":
                return undefined
              case "AwaitingServerFinal":
                return additionalData === undefined || additionalData.length === 0
                  ? `${name}: the server accepted without proving it knows the password (no server-final-message)`
                  : verify(additionalData, state.serverSignature)
              case "AwaitingServerFirst":
                return `${name}: the server accepted before the exchange was complete, so it proved nothing`
            }
          }
        }
      })
  })

/**
 * SCRAM-SHA-1 (RFC 5802).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const scramSha1: Mechanism = scram("SCRAM-SHA-1", "sha1", 90)

/**
 * SCRAM-SHA-256 (RFC 7677).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const scramSha256: Mechanism = scram("SCRAM-SHA-256", "sha256", 100)

/**
 * NTLM ([MS-NLMP], over SMTP as [MS-SMTPNTLM]) with the NTLMv2 response: NEGOTIATE as the initial response, then
 * AUTHENTICATE in answer to the server's CHALLENGE. A user name "DOMAIN\user" names the domain; any other ("user",
 * "user@example.com") is sent with an empty domain.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const ntlm: Mechanism = make({
  name: "NTLM",
  strength: 40,
  exposesCredentialsInClear: false,
  credential: "password",
  start: (input) =>
    Either.gen(function*() {
      const password = yield* secretOf("NTLM", "password", input)
      const workstation = input.workstation ?? ""
      yield* check(unsendable("NTLM", { "user name": input.username, password, workstation }))
      const negotiate = Ntlm.negotiateMessage()
      let state: "Negotiated" | "NegotiatedAgain" | "Authenticated" = "Negotiated"
      return {
        initialResponse: Redacted.make(negotiate),
        step: (challenge) => {
          if (state === "Authenticated") return fail("NTLM: the server sent a challenge after the AUTHENTICATE message")
          if (!Ntlm.isChallenge(challenge)) {
            // A server that did not take NEGOTIATE with AUTH asks for it: empty, or Exchange's "334 NTLM supported".
            if (state === "NegotiatedAgain") return fail("NTLM: the server's challenge is not a CHALLENGE_MESSAGE")
            state = "NegotiatedAgain"
            return respond(negotiate)
          }
          const parsed = Ntlm.parseChallenge(challenge)
          if (Either.isLeft(parsed)) return fail(`NTLM: ${parsed.left}`)
          const message = Ntlm.authenticateMessage({
            challenge: parsed.right,
            password,
            username: input.username,
            workstation,
            clientChallenge: randomOf(input)(8),
            time: input.timestamp
          })
          if (Either.isLeft(message)) return fail(`NTLM: ${message.left}`)
          state = "Authenticated"
          return respond(message.right)
        },
        finish: () => undefined
      }
    })
})

/**
 * A mechanism this module does not implement. Unless told otherwise it is assumed to send a password, and to expose
 * it on a connection without TLS. Its exchange is held to the same rules as the built-in ones: a thrown exception
 * becomes a `Fail`, and a failure is final.
 *
 * @since 0.1.0
 * @category constructors
 */
export const custom = (
  name: string,
  strength: number,
  start: (input: StartInput) => Either.Either<Exchange, string>,
  options?: {
    readonly exposesCredentialsInClear?: boolean | undefined
    readonly credential?: Credential | undefined
  }
): Mechanism =>
  make({
    name,
    strength,
    exposesCredentialsInClear: options?.exposesCredentialsInClear ?? true,
    credential: options?.credential ?? "password",
    start
  })

/**
 * Every mechanism implemented here, strongest first.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const all: ReadonlyArray<Mechanism> = [
  scramSha256,
  scramSha1,
  cramSha256,
  cramSha1,
  cramMd5,
  ntlm,
  oauthBearer,
  xoauth2,
  plain,
  login
]

/**
 * How to choose a mechanism.
 *
 * @since 0.1.0
 * @category models
 */
export interface ChooseOptions {
  /** The mechanisms the client accepts, most preferred first; by default all of `mechanisms`, strongest first. */
  readonly preference?: ReadonlyArray<string> | undefined
  /** Use this mechanism or none. */
  readonly pinned?: string | undefined
  /** What the client holds; "password" by default. */
  readonly credential?: Credential | undefined
  /** The connection is not encrypted: leave out mechanisms that would expose the credentials. */
  readonly cleartext?: boolean | undefined
  /** The mechanisms to choose from; `all` by default. Add `custom` ones here. */
  readonly mechanisms?: ReadonlyArray<Mechanism> | undefined
}

const listOf = (names: ReadonlyArray<string>): string => names.length === 0 ? "none" : names.join(" ")

/**
 * The mechanism to authenticate with, given the ones the server offers (EHLO's AUTH keyword): the pinned one, or the
 * first of the client's preference (by default the strongest) that the server offers and the credentials and the
 * connection allow. A `Left` says why there is none.
 *
 * @since 0.1.0
 * @category choosing
 */
export const choose = (
  offered: ReadonlyArray<string>,
  options: ChooseOptions = {}
): Either.Either<Mechanism, string> => {
  const known = options.mechanisms ?? all
  const credential = options.credential ?? "password"
  const secret = credential === "password" ? "password" : "access token"
  const offers = new Set(offered.map((name) => name.toUpperCase()))
  const exposed = (mechanism: Mechanism) => options.cleartext === true && mechanism.exposesCredentialsInClear

  if (options.pinned !== undefined) {
    const name = options.pinned.toUpperCase()
    const mechanism = known.find((m) => m.name === name)
    if (mechanism === undefined) {
      return Either.left(`AUTH ${name} is not a mechanism this client has (it has ${listOf(known.map((m) => m.name))})`)
    }
    if (!offers.has(name)) return Either.left(`the server does not offer AUTH ${name}; it offers ${listOf(offered)}`)
    if (mechanism.credential !== credential) {
      return Either.left(
        `AUTH ${name} needs ${mechanism.credential === "token" ? "an OAuth access token" : "a password"}`
      )
    }
    if (exposed(mechanism)) {
      return Either.left(`AUTH ${name} would send the ${secret} in the clear: the connection is not encrypted`)
    }
    return Either.right(mechanism)
  }

  const candidates = options.preference === undefined
    ? [...known].sort((a, b) => b.strength - a.strength)
    : options.preference.flatMap((name) => known.filter((m) => m.name === name.toUpperCase()))
  const usable = candidates.filter((m) => m.credential === credential)
  const common = usable.filter((m) => offers.has(m.name))
  const chosen = common.find((m) => !exposed(m))
  if (chosen !== undefined) return Either.right(chosen)
  if (offers.size === 0) {
    return Either.left(
      `the server offers no AUTH mechanism${options.cleartext === true ? " (many offer AUTH only after STARTTLS)" : ""}`
    )
  }
  if (common.length > 0) {
    return Either.left(
      `the server offers only ${
        listOf(common.map((m) => m.name))
      } for a ${secret}, which would send it in the clear: ` +
        "the connection is not encrypted"
    )
  }
  return Either.left(
    `no AUTH mechanism in common: the server offers ${listOf(offered)}; with a ${secret} the client can use ` +
      listOf(usable.map((m) => m.name))
  )
}
