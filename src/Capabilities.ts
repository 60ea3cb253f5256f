/**
 * What a server offers, read from its EHLO (or LHLO) reply (RFC 5321 §4.1.1.1): keywords matched without regard to
 * case, their parameters kept, server order kept, and typed accessors for the extensions effect-smtp uses.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import { dual } from "effect/Function"
import * as Option from "effect/Option"
import type { SmtpReply } from "./SmtpReply.js"

/**
 * One EHLO keyword with its parameters, as the server listed it. The keyword is upper-cased.
 *
 * @since 0.1.0
 * @category models
 */
export interface Capability {
  readonly keyword: string
  readonly parameters: ReadonlyArray<string>
}

/**
 * The server's capabilities: the first line of its EHLO reply (its name and greeting) and every keyword line, in
 * server order.
 *
 * @since 0.1.0
 * @category models
 */
export class Capabilities extends Data.Class<{
  /** The first line of the EHLO reply: the server's domain and any greeting text. */
  readonly greeting: string
  /** Every keyword line in server order (Hunny's `CapabilityAt`). */
  readonly entries: ReadonlyArray<Capability>
}> {}

/** ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-"); the legacy `AUTH=LOGIN` form is read as `AUTH LOGIN`. */
const KEYWORD_LINE = /^([A-Za-z0-9][A-Za-z0-9-]*)(?:[ =](.*))?$/

/**
 * Reads capabilities from the text lines of an EHLO or LHLO reply. Lines that are not a keyword are skipped: servers
 * put odd things there, and an unknown line must not cost the whole session.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromLines = (lines: ReadonlyArray<string>): Capabilities => {
  const entries: Array<Capability> = []
  for (let i = 1; i < lines.length; i++) {
    const match = KEYWORD_LINE.exec(lines[i]!.trim())
    if (match === null) continue
    const parameters = match[2] === undefined ? [] : match[2].split(" ").filter((p) => p !== "")
    entries.push({ keyword: match[1]!.toUpperCase(), parameters })
  }
  return new Capabilities({ greeting: lines[0] ?? "", entries })
}

/**
 * Reads capabilities from an EHLO or LHLO reply.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromReply = (reply: SmtpReply): Capabilities => fromLines(reply.lines)

/**
 * No capabilities: what a server that only speaks HELO offers.
 *
 * @since 0.1.0
 * @category constructors
 */
export const empty: Capabilities = new Capabilities({ greeting: "", entries: [] })

/**
 * Tells whether the server listed a keyword, in any case (Hunny's `HasCapability`).
 *
 * @since 0.1.0
 * @category getters
 */
export const has: {
  (keyword: string): (self: Capabilities) => boolean
  (self: Capabilities, keyword: string): boolean
} = dual(2, (self: Capabilities, keyword: string): boolean => {
  const wanted = keyword.toUpperCase()
  return self.entries.some((entry) => entry.keyword === wanted)
})

/**
 * The parameters of a keyword, all its lines merged in order without repeats; `None` when the keyword is absent.
 *
 * @since 0.1.0
 * @category getters
 */
export const parameters: {
  (keyword: string): (self: Capabilities) => Option.Option<ReadonlyArray<string>>
  (self: Capabilities, keyword: string): Option.Option<ReadonlyArray<string>>
} = dual(2, (self: Capabilities, keyword: string): Option.Option<ReadonlyArray<string>> => {
  const wanted = keyword.toUpperCase()
  let found = false
  const merged: Array<string> = []
  for (const entry of self.entries) {
    if (entry.keyword !== wanted) continue
    found = true
    for (const parameter of entry.parameters) {
      if (!merged.includes(parameter)) merged.push(parameter)
    }
  }
  return found ? Option.some(merged) : Option.none()
})

/**
 * The largest message the server accepts, in octets (RFC 1870 SIZE). `None` when the server did not say, or said 0
 * (no fixed limit).
 *
 * @since 0.1.0
 * @category getters
 */
export const sizeLimit = (self: Capabilities): Option.Option<number> =>
  Option.flatMap(parameters(self, "SIZE"), (values) => {
    const value = values[0]
    if (value === undefined || !/^\d{1,15}$/.test(value)) return Option.none()
    const limit = Number(value)
    return limit > 0 ? Option.some(limit) : Option.none()
  })

/**
 * The SASL mechanisms the server offers (RFC 4954), upper-cased, from both `AUTH` and the legacy `AUTH=` lines.
 *
 * @since 0.1.0
 * @category getters
 */
export const authMechanisms = (self: Capabilities): ReadonlyArray<string> =>
  Option.match(parameters(self, "AUTH"), {
    onNone: () => [],
    onSome: (values) => [...new Set(values.map((value) => value.toUpperCase()))]
  })

/**
 * RFC 2920 PIPELINING.
 *
 * @since 0.1.0
 * @category getters
 */
export const pipelining = (self: Capabilities): boolean => has(self, "PIPELINING")

/**
 * RFC 3030 CHUNKING (BDAT).
 *
 * @since 0.1.0
 * @category getters
 */
export const chunking = (self: Capabilities): boolean => has(self, "CHUNKING")

/**
 * RFC 3030 BINARYMIME.
 *
 * @since 0.1.0
 * @category getters
 */
export const binaryMime = (self: Capabilities): boolean => has(self, "BINARYMIME")

/**
 * RFC 6152 8BITMIME.
 *
 * @since 0.1.0
 * @category getters
 */
export const eightBitMime = (self: Capabilities): boolean => has(self, "8BITMIME")

/**
 * RFC 6531 SMTPUTF8.
 *
 * @since 0.1.0
 * @category getters
 */
export const smtpUtf8 = (self: Capabilities): boolean => has(self, "SMTPUTF8")

/**
 * RFC 3461 DSN.
 *
 * @since 0.1.0
 * @category getters
 */
export const dsn = (self: Capabilities): boolean => has(self, "DSN")

/**
 * RFC 2034 ENHANCEDSTATUSCODES.
 *
 * @since 0.1.0
 * @category getters
 */
export const enhancedStatusCodes = (self: Capabilities): boolean => has(self, "ENHANCEDSTATUSCODES")

/**
 * RFC 8689 REQUIRETLS.
 *
 * @since 0.1.0
 * @category getters
 */
export const requireTls = (self: Capabilities): boolean => has(self, "REQUIRETLS")

/**
 * RFC 3207 STARTTLS.
 *
 * @since 0.1.0
 * @category getters
 */
export const startTls = (self: Capabilities): boolean => has(self, "STARTTLS")
