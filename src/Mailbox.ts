/**
 * Mailbox addresses as SMTP carries them (RFC 5321 §4.1.2, RFC 6531): dot-string and quoted local parts, domains,
 * IPv4, IPv6 and general address literals, when SMTPUTF8 is required, and IDN domains turned into A-labels.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import { InvalidInputError } from "./SmtpError.js"

/**
 * A valid mailbox: a local part and a domain (or address literal), as they go on the wire between `<` and `>`.
 *
 * @since 0.1.0
 * @category models
 */
export class Mailbox extends Data.Class<{
  /** The local part as written: a dot-string, or a quoted string with its quotes. */
  readonly localPart: string
  /** The domain (ASCII or with U-labels) or the address literal with its brackets. */
  readonly domain: string
}> {
  /**
   * The address as `local@domain`.
   *
   * @since 0.1.0
   */
  override toString(): string {
    return `${this.localPart}@${this.domain}`
  }
}

// atext (RFC 5322 §3.2.3) plus UTF8-non-ascii (RFC 6531 §3.3). The `u` flag makes lone surrogates fail to match.
const ATOM = "[A-Za-z0-9!#$%&'*+\\-/=?^_`{|}~\\u{80}-\\u{D7FF}\\u{E000}-\\u{10FFFF}]+"
const DOT_STRING = new RegExp(`^${ATOM}(?:\\.${ATOM})*$`, "u")
// qtextSMTP and quoted-pairSMTP (RFC 5321 §4.1.2), plus UTF8-non-ascii.
const QUOTED_STRING = /^"(?:[\x20\x21\x23-\x5B\x5D-\x7E\u{80}-\u{D7FF}\u{E000}-\u{10FFFF}]|\\[\x20-\x7E])*"$/u
const UNICODE_LABEL = /^[A-Za-z0-9\u{80}-\u{D7FF}\u{E000}-\u{10FFFF}][A-Za-z0-9\-\u{80}-\u{D7FF}\u{E000}-\u{10FFFF}]*$/u
const IPV4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/
const GENERAL_LITERAL = /^[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?:[\x21-\x5A\x5E-\x7E]+$/
const NON_ASCII = /[^\x00-\x7F]/
// An ASCII domain's dot-separated labels, matched at once: splitting it to test label by label took 5 times as long.
const ASCII_DOMAIN =
  /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/

const utf8 = new TextEncoder()

/**
 * Tells whether a string holds any character outside US-ASCII.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isAscii = (s: string): boolean => !NON_ASCII.test(s)

/** Tells whether a string is a valid IPv4 dotted quad. */
const isIPv4 = (s: string): boolean => {
  const match = IPV4.exec(s)
  return match !== null && match.slice(1).every((part) => Number(part) <= 255)
}

/** Tells whether a string is a valid IPv6 address, using the platform's URL parser (WHATWG) as the grammar. */
const isIPv6 = (s: string): boolean => {
  if (!/^[0-9A-Fa-f:.]+$/.test(s)) return false
  return URL.canParse(`http://[${s}]/`)
}

/**
 * Converts a domain's U-labels to A-labels (IDNA, via the platform's URL parser); ASCII domains come back unchanged.
 * `undefined` when the domain cannot be converted.
 */
const asciiDomain = (domain: string): string | undefined => {
  if (isAscii(domain)) return domain
  if (!domain.split(".").every((label) => UNICODE_LABEL.test(label))) return undefined
  if (!URL.canParse(`http://${domain}/`)) return undefined
  const ascii = new URL(`http://${domain}/`).hostname
  return ASCII_DOMAIN.test(ascii) && ascii.length <= 255 ? ascii : undefined
}

/**
 * Explains why a domain or address literal is invalid, or returns `undefined` when it is valid.
 */
const domainProblem = (domain: string): string | undefined => {
  if (domain === "") return "the domain is empty"
  if (domain.startsWith("[")) {
    if (!domain.endsWith("]")) return "an address literal must end with ']'"
    const literal = domain.slice(1, -1)
    if (/^IPv6:/i.test(literal)) {
      return isIPv6(literal.slice(5)) ? undefined : "the IPv6 address literal is not a valid IPv6 address"
    }
    if (IPV4.test(literal)) return isIPv4(literal) ? undefined : "the IPv4 address literal has a part over 255"
    return GENERAL_LITERAL.test(literal) ? undefined : "the address literal is neither IPv4, IPv6 nor tag:content"
  }
  if (domain.length > 255) return "the domain is longer than 255 characters"
  if (isAscii(domain)) {
    return ASCII_DOMAIN.test(domain)
      ? undefined
      : "the domain must be dot-separated labels of letters, digits and inner hyphens, each 1 to 63 long"
  }
  return asciiDomain(domain) === undefined
    ? "the internationalized domain cannot be converted to A-labels"
    : undefined
}

/**
 * Tells whether a string is a valid domain (with A-labels or U-labels) or address literal, as in EHLO or after `@`.
 *
 * @since 0.1.0
 * @category predicates
 */
export const isDomain = (domain: string): boolean => domainProblem(domain) === undefined

/**
 * Checks a domain or address literal, failing with an `InvalidInputError` that names `field`.
 *
 * @since 0.1.0
 * @category parsers
 */
export const validateDomain = (domain: string, field: string): Either.Either<string, InvalidInputError> => {
  const problem = domainProblem(domain)
  return problem === undefined ? Either.right(domain) : Either.left(new InvalidInputError({ field, reason: problem }))
}

/**
 * Parses a mailbox, `local@domain`, optionally inside `<` `>`. Anything else, including whitespace, control
 * characters and source routes, is an `InvalidInputError` naming `field`.
 *
 * @since 0.1.0
 * @category parsers
 */
export const parse = (input: string, field = "address"): Either.Either<Mailbox, InvalidInputError> => {
  const known = recentlyParsed.get(input)
  if (known !== undefined) return Either.right(known)
  const fail = (reason: string) => Either.left(new InvalidInputError({ field, reason }))
  const address = input.startsWith("<") && input.endsWith(">") ? input.slice(1, -1) : input
  if (address === "") return fail("the address is empty")
  if (/[\x00-\x1F\x7F]/.test(address)) return fail("it holds a control character (CR, LF, NUL or another)")
  if (address.startsWith("@")) return fail("source routes are not supported")
  const at = address.lastIndexOf("@")
  if (at <= 0) return fail("an address must be local-part@domain")
  const localPart = address.slice(0, at)
  const domain = address.slice(at + 1)
  if (!DOT_STRING.test(localPart) && !QUOTED_STRING.test(localPart)) {
    return fail(
      "the local part must be a dot-string (letters, digits, !#$%&'*+-/=?^_`{|}~ and non-ASCII, with single inner dots) " +
        "or a quoted string"
    )
  }
  const problem = domainProblem(domain)
  if (problem !== undefined) return fail(problem)
  // An ASCII address has as many octets as characters: no need to encode it to count them.
  const octets = isAscii(address) ? address.length : utf8.encode(address).length
  if (octets > 254) return fail("the address is longer than 254 octets")
  const mailbox = new Mailbox({ localPart, domain })
  if (recentlyParsed.size >= RECENTLY_PARSED) recentlyParsed.delete(recentlyParsed.keys().next().value!)
  recentlyParsed.set(input, mailbox)
  return Either.right(mailbox)
}

/**
 * The last addresses that parsed, by input: a batch parses its sender again and again, and every address twice (to
 * plan the message, then to encode its command). A `Mailbox` is immutable, so handing out the same one is safe.
 */
const recentlyParsed = new Map<string, Mailbox>()
const RECENTLY_PARSED = 8

/**
 * The address as it goes between `<` and `>`.
 *
 * @since 0.1.0
 * @category encoding
 */
export const format = (mailbox: Mailbox): string => `${mailbox.localPart}@${mailbox.domain}`

/**
 * Tells whether sending this address needs the server's SMTPUTF8 extension: its local part is not ASCII. A non-ASCII
 * domain alone does not, since it can go as A-labels (see `toAscii`).
 *
 * @since 0.1.0
 * @category predicates
 */
export const requiresSmtpUtf8 = (mailbox: Mailbox): boolean => !isAscii(mailbox.localPart)

/**
 * The same mailbox with its domain in A-labels (`xn--…`), for a server without SMTPUTF8. Fails when the local part is
 * not ASCII, since nothing can carry it without SMTPUTF8.
 *
 * @since 0.1.0
 * @category conversions
 */
export const toAscii = (mailbox: Mailbox, field = "address"): Either.Either<Mailbox, InvalidInputError> => {
  if (!isAscii(mailbox.localPart)) {
    return Either.left(
      new InvalidInputError({ field, reason: "the local part is not ASCII, so the server must offer SMTPUTF8" })
    )
  }
  return Either.map(
    domainToAscii(mailbox.domain, field),
    (domain) => domain === mailbox.domain ? mailbox : new Mailbox({ localPart: mailbox.localPart, domain })
  )
}

/**
 * A valid domain with its U-labels turned into A-labels (`bücher.example` to `xn--bcher-kva.example`), as EHLO and a
 * server without SMTPUTF8 need it. ASCII domains and address literals come back unchanged.
 *
 * @since 0.1.0
 * @category conversions
 */
export const domainToAscii = (domain: string, field = "domain"): Either.Either<string, InvalidInputError> =>
  Either.flatMap(validateDomain(domain, field), (valid) => {
    const ascii = asciiDomain(valid)
    return ascii === undefined
      ? Either.left(new InvalidInputError({ field, reason: "the domain cannot be converted to A-labels" }))
      : Either.right(ascii)
  })
