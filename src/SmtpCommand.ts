/**
 * SMTP commands as values, and their encoder (RFC 5321 §4.1 with the ESMTP extensions' parameters). Every argument is
 * checked before it is written: no CR, LF, NUL or other control character can reach the wire through any of them, and
 * a rejection is an `InvalidInputError` that names the field.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import * as Mailbox from "./Mailbox.js"
import { InvalidInputError } from "./SmtpError.js"

/**
 * The BODY parameter of MAIL (RFC 6152, RFC 3030).
 *
 * @since 0.1.0
 * @category models
 */
export type BodyType = "7BIT" | "8BITMIME" | "BINARYMIME"

/**
 * The DSN NOTIFY conditions of RCPT (RFC 3461 §4.1).
 *
 * @since 0.1.0
 * @category models
 */
export type NotifyCondition = "SUCCESS" | "FAILURE" | "DELAY"

/**
 * Extension parameters with no typed field: keyword to value, or `true` for a keyword without a value.
 *
 * @since 0.1.0
 * @category models
 */
export type ExtensionParameters = Readonly<Record<string, string | true>>

/**
 * The parameters of MAIL FROM.
 *
 * @since 0.1.0
 * @category models
 */
export interface MailParameters {
  /** RFC 1870 SIZE: the message size in octets. */
  readonly size?: number | undefined
  /** RFC 6152 / RFC 3030 BODY. */
  readonly body?: BodyType | undefined
  /** RFC 6531 SMTPUTF8. */
  readonly smtpUtf8?: boolean | undefined
  /** RFC 3461 RET: return the full message or only its headers in a DSN. */
  readonly ret?: "FULL" | "HDRS" | undefined
  /** RFC 3461 ENVID: printable ASCII, at most 100 characters; sent as xtext. */
  readonly envelopeId?: string | undefined
  /** RFC 8689 REQUIRETLS. */
  readonly requireTls?: boolean | undefined
  /** RFC 4954 §5 AUTH: the authorized submitter's address, or "" for `<>`; sent as xtext. */
  readonly auth?: string | undefined
  /** Any other extension parameter. */
  readonly extensions?: ExtensionParameters | undefined
}

/**
 * The parameters of RCPT TO.
 *
 * @since 0.1.0
 * @category models
 */
export interface RcptParameters {
  /** RFC 3461 NOTIFY: "NEVER", or when to send a DSN. */
  readonly notify?: "NEVER" | ReadonlyArray<NotifyCondition> | undefined
  /** RFC 3461 ORCPT: the original recipient's address. */
  readonly originalRecipient?: string | undefined
  /** Any other extension parameter. */
  readonly extensions?: ExtensionParameters | undefined
}

/**
 * An SMTP command.
 *
 * @since 0.1.0
 * @category models
 */
export type SmtpCommand = Data.TaggedEnum<{
  Ehlo: { readonly domain: string }
  Helo: { readonly domain: string }
  Lhlo: { readonly domain: string }
  Mail: { readonly from: string; readonly parameters: MailParameters }
  Rcpt: { readonly to: string; readonly parameters: RcptParameters }
  Data: {}
  Bdat: { readonly size: number; readonly last: boolean }
  Rset: {}
  Noop: { readonly text: string | undefined }
  Vrfy: { readonly text: string }
  Expn: { readonly text: string }
  Help: { readonly topic: string | undefined }
  Quit: {}
  StartTls: {}
  Auth: { readonly mechanism: string; readonly initialResponse: Redacted.Redacted<Uint8Array> | undefined }
  AuthResponse: { readonly response: Redacted.Redacted<Uint8Array> }
  AuthCancel: {}
  Raw: { readonly line: string }
}>

const Command = Data.taggedEnum<SmtpCommand>()

/**
 * Matches a command by its tag.
 *
 * @since 0.1.0
 * @category pattern matching
 */
export const $match = Command.$match

/**
 * Tells a command's tag.
 *
 * @since 0.1.0
 * @category refinements
 */
export const $is = Command.$is

/**
 * EHLO: greet the server and ask for its extensions.
 *
 * @since 0.1.0
 * @category constructors
 */
export const ehlo = (domain: string): SmtpCommand => Command.Ehlo({ domain })

/**
 * HELO: greet a server that does not speak ESMTP.
 *
 * @since 0.1.0
 * @category constructors
 */
export const helo = (domain: string): SmtpCommand => Command.Helo({ domain })

/**
 * LHLO: greet an LMTP server (RFC 2033).
 *
 * @since 0.1.0
 * @category constructors
 */
export const lhlo = (domain: string): SmtpCommand => Command.Lhlo({ domain })

/**
 * MAIL FROM: start a transaction. `from` is the reverse-path address, or "" for the null reverse-path `<>`.
 *
 * @since 0.1.0
 * @category constructors
 */
export const mail = (from: string, parameters: MailParameters = {}): SmtpCommand => Command.Mail({ from, parameters })

/**
 * RCPT TO: add a recipient.
 *
 * @since 0.1.0
 * @category constructors
 */
export const rcpt = (to: string, parameters: RcptParameters = {}): SmtpCommand => Command.Rcpt({ to, parameters })

/**
 * DATA: ask to send the message.
 *
 * @since 0.1.0
 * @category constructors
 */
export const data: SmtpCommand = Command.Data()

/**
 * BDAT: announce a chunk of `size` octets of the message (RFC 3030); `last` ends the message.
 *
 * @since 0.1.0
 * @category constructors
 */
export const bdat = (size: number, last: boolean): SmtpCommand => Command.Bdat({ size, last })

/**
 * RSET: abort the current transaction.
 *
 * @since 0.1.0
 * @category constructors
 */
export const rset: SmtpCommand = Command.Rset()

/**
 * NOOP, with an optional argument the server ignores.
 *
 * @since 0.1.0
 * @category constructors
 */
export const noop = (text?: string): SmtpCommand => Command.Noop({ text })

/**
 * VRFY: ask whether a user or mailbox exists.
 *
 * @since 0.1.0
 * @category constructors
 */
export const vrfy = (text: string): SmtpCommand => Command.Vrfy({ text })

/**
 * EXPN: ask for the members of a mailing list.
 *
 * @since 0.1.0
 * @category constructors
 */
export const expn = (text: string): SmtpCommand => Command.Expn({ text })

/**
 * HELP, with an optional topic.
 *
 * @since 0.1.0
 * @category constructors
 */
export const help = (topic?: string): SmtpCommand => Command.Help({ topic })

/**
 * QUIT: end the session.
 *
 * @since 0.1.0
 * @category constructors
 */
export const quit: SmtpCommand = Command.Quit()

/**
 * STARTTLS: upgrade the connection to TLS (RFC 3207).
 *
 * @since 0.1.0
 * @category constructors
 */
export const startTls: SmtpCommand = Command.StartTls()

/**
 * AUTH: start a SASL exchange (RFC 4954), with the mechanism's initial response when it has one. The response is
 * the raw bytes; the encoder writes them as base64 (an empty response as `=`).
 *
 * @since 0.1.0
 * @category constructors
 */
export const auth = (mechanism: string, initialResponse?: Redacted.Redacted<Uint8Array>): SmtpCommand =>
  Command.Auth({ mechanism, initialResponse })

/**
 * The client's answer to a 334 challenge during AUTH, as raw bytes; the encoder writes them as base64.
 *
 * @since 0.1.0
 * @category constructors
 */
export const authResponse = (response: Redacted.Redacted<Uint8Array>): SmtpCommand => Command.AuthResponse({ response })

/**
 * `*`: cancel an AUTH exchange the client cannot continue (RFC 4954 §4).
 *
 * @since 0.1.0
 * @category constructors
 */
export const authCancel: SmtpCommand = Command.AuthCancel()

/**
 * Any other command line, for extensions (Hunny's `SendCommand`, Poco's `sendCommand`); the encoder adds the CRLF.
 *
 * @since 0.1.0
 * @category constructors
 */
export const raw = (line: string): SmtpCommand => Command.Raw({ line })

/**
 * The command's verb, for errors, spans and logs: never its arguments.
 *
 * @since 0.1.0
 * @category getters
 */
export const verb = (command: SmtpCommand): string => {
  switch (command._tag) {
    case "StartTls":
      return "STARTTLS"
    case "AuthResponse":
    case "AuthCancel":
      return "AUTH"
    case "Raw": {
      const word = command.line.trimStart().split(/[ \t]/, 1)[0] ?? ""
      return /^[A-Za-z0-9-]{1,32}$/.test(word) ? word.toUpperCase() : "RAW"
    }
    default:
      return command._tag.toUpperCase()
  }
}

// --- checks ---------------------------------------------------------------------------------------------------------

type Checked<A> = Either.Either<A, InvalidInputError>

const invalid = (field: string, reason: string): Checked<never> => Either.left(new InvalidInputError({ field, reason }))

/** C0 controls (TAB excepted) and DEL: CR, LF and NUL among them. */
const CONTROL = /[\x00-\x08\x0A-\x1F\x7F]/

const checkText = (field: string, text: string, required: boolean): Checked<string> => {
  if (CONTROL.test(text)) return invalid(field, "it holds a control character (CR, LF, NUL or another)")
  if (required && text.trim() === "") return invalid(field, "it is empty")
  return Either.right(text)
}

/** esmtp-keyword (RFC 5321 §4.1.2). */
const ESMTP_KEYWORD = /^[A-Za-z0-9][A-Za-z0-9-]*$/
/** esmtp-value (RFC 5321 §4.1.2), with UTF-8 as RFC 6531 §3.3 allows. */
const ESMTP_VALUE = /^[\x21-\x3C\x3E-\x7E\u{80}-\u{D7FF}\u{E000}-\u{10FFFF}]+$/u
const SASL_MECHANISM = /^[A-Za-z0-9_-]{1,20}$/

const utf8 = new TextEncoder()

/**
 * Encodes a value as xtext (RFC 3461 §4): "+", "=" and every octet outside 33–126 become `+HH`, UTF-8 octet by octet.
 *
 * @since 0.1.0
 * @category encoding
 */
export const xtext = (value: string): string => {
  let out = ""
  for (const byte of utf8.encode(value)) {
    out += byte >= 33 && byte <= 126 && byte !== 0x2b && byte !== 0x3d
      ? String.fromCharCode(byte)
      : `+${byte.toString(16).toUpperCase().padStart(2, "0")}`
  }
  return out
}

/** utf-8-addr-xtext (RFC 6533 §3): non-ASCII kept, "+", "=", "\" and anything outside 33–126 as \x{HEX}. */
const utf8AddrXtext = (value: string): string => {
  let out = ""
  for (const char of value) {
    const point = char.codePointAt(0)!
    out += point > 0x7e || (point >= 0x21 && point !== 0x2b && point !== 0x3d && point !== 0x5c)
      ? char
      : `\\x{${point.toString(16).toUpperCase()}}`
  }
  return out
}

const base64 = (bytes: Uint8Array): string => {
  let binary = ""
  for (let i = 0; i < bytes.length; i++) binary += String.fromCharCode(bytes[i]!)
  return btoa(binary)
}

const checkPath = (field: string, address: string, allowNull: boolean): Checked<string> => {
  if (allowNull && (address === "" || address === "<>")) return Either.right("<>")
  return Either.map(Mailbox.parse(address, field), (mailbox) => `<${Mailbox.format(mailbox)}>`)
}

const checkHelloDomain = (verbName: string, domain: string): Checked<string> => {
  const field = `${verbName} client host name`
  return Either.flatMap(checkText(field, domain, true), () => Mailbox.domainToAscii(domain, field))
}

const extensionParameters = (verbName: string, extensions: ExtensionParameters | undefined): Checked<string> => {
  let out = ""
  for (const [keyword, value] of Object.entries(extensions ?? {})) {
    const field = `${verbName} parameter ${JSON.stringify(keyword)}`
    if (!ESMTP_KEYWORD.test(keyword)) return invalid(field, "a parameter keyword must be letters, digits and hyphens")
    if (value === true) {
      out += ` ${keyword}`
    } else {
      if (!ESMTP_VALUE.test(value)) {
        return invalid(field, "a parameter value must be one or more printable characters other than '=' and space")
      }
      out += ` ${keyword}=${value}`
    }
  }
  return Either.right(out)
}

// Plain code with early returns rather than `Either.gen`: MAIL and RCPT are encoded once per message.
const mailLine = (from: string, p: MailParameters): Checked<string> => {
  const path = checkPath("MAIL FROM address", from, true)
  if (Either.isLeft(path)) return path
  let line = `MAIL FROM:${path.right}`
  if (p.size !== undefined) {
    if (!Number.isSafeInteger(p.size) || p.size < 0) return invalid("SIZE", "it must be a whole number ≥ 0")
    line += ` SIZE=${p.size}`
  }
  if (p.body !== undefined) {
    if (p.body !== "7BIT" && p.body !== "8BITMIME" && p.body !== "BINARYMIME") {
      return invalid("BODY", "it must be 7BIT, 8BITMIME or BINARYMIME")
    }
    line += ` BODY=${p.body}`
  }
  if (p.smtpUtf8 === true) line += " SMTPUTF8"
  if (p.ret !== undefined) {
    if (p.ret !== "FULL" && p.ret !== "HDRS") return invalid("RET", "it must be FULL or HDRS")
    line += ` RET=${p.ret}`
  }
  if (p.envelopeId !== undefined) {
    if (!/^[\x21-\x7E]{1,100}$/.test(p.envelopeId)) {
      return invalid("ENVID", "it must be 1 to 100 printable ASCII characters")
    }
    line += ` ENVID=${xtext(p.envelopeId)}`
  }
  if (p.requireTls === true) line += " REQUIRETLS"
  if (p.auth !== undefined) {
    const identity = checkPath("MAIL AUTH identity", p.auth, true)
    if (Either.isLeft(identity)) return identity
    line += ` AUTH=${identity.right === "<>" ? "<>" : xtext(identity.right.slice(1, -1))}`
  }
  return Either.map(extensionParameters("MAIL", p.extensions), (parameters) => line + parameters)
}

const NOTIFY_CONDITIONS: ReadonlyArray<NotifyCondition> = ["SUCCESS", "FAILURE", "DELAY"]

const rcptLine = (to: string, p: RcptParameters): Checked<string> => {
  const path = checkPath("RCPT TO address", to, false)
  if (Either.isLeft(path)) return path
  let line = `RCPT TO:${path.right}`
  if (p.notify !== undefined) {
    if (p.notify === "NEVER") {
      line += " NOTIFY=NEVER"
    } else {
      const conditions = [...new Set(p.notify)]
      if (conditions.length === 0 || !conditions.every((c) => NOTIFY_CONDITIONS.includes(c))) {
        return invalid("NOTIFY", "it must be NEVER or a non-empty list of SUCCESS, FAILURE and DELAY")
      }
      line += ` NOTIFY=${conditions.join(",")}`
    }
  }
  if (p.originalRecipient !== undefined) {
    const mailbox = Mailbox.parse(p.originalRecipient, "ORCPT")
    if (Either.isLeft(mailbox)) return Either.left(mailbox.left)
    const address = Mailbox.format(mailbox.right)
    line += Mailbox.isAscii(address) ? ` ORCPT=rfc822;${xtext(address)}` : ` ORCPT=utf-8;${utf8AddrXtext(address)}`
  }
  return Either.map(extensionParameters("RCPT", p.extensions), (parameters) => line + parameters)
}

const authLine = (mechanism: string, initialResponse: Redacted.Redacted<Uint8Array> | undefined): Checked<string> => {
  if (!SASL_MECHANISM.test(mechanism)) {
    return invalid("AUTH mechanism", "a SASL mechanism name is 1 to 20 letters, digits, hyphens or underscores")
  }
  if (initialResponse === undefined) return Either.right(`AUTH ${mechanism.toUpperCase()}`)
  const bytes = Redacted.value(initialResponse)
  return Either.right(`AUTH ${mechanism.toUpperCase()} ${bytes.length === 0 ? "=" : base64(bytes)}`)
}

const optionalText = (verbName: string, field: string, text: string | undefined): Checked<string> =>
  text === undefined ? Either.right(verbName) : Either.map(checkText(field, text, true), (t) => `${verbName} ${t}`)

/**
 * The command's line without its CRLF, or why it cannot be sent.
 */
const commandLine = (command: SmtpCommand): Checked<string> => {
  switch (command._tag) {
    case "Ehlo":
    case "Helo":
    case "Lhlo": {
      const verbName = command._tag.toUpperCase()
      return Either.map(checkHelloDomain(verbName, command.domain), (domain) => `${verbName} ${domain}`)
    }
    case "Mail":
      return mailLine(command.from, command.parameters)
    case "Rcpt":
      return rcptLine(command.to, command.parameters)
    case "Data":
      return Either.right("DATA")
    case "Bdat":
      return Number.isSafeInteger(command.size) && command.size >= 0
        ? Either.right(`BDAT ${command.size}${command.last ? " LAST" : ""}`)
        : invalid("BDAT chunk size", "it must be a whole number ≥ 0")
    case "Rset":
      return Either.right("RSET")
    case "Noop":
      return optionalText("NOOP", "NOOP argument", command.text)
    case "Vrfy":
      return Either.map(checkText("VRFY argument", command.text, true), (t) => `VRFY ${t}`)
    case "Expn":
      return Either.map(checkText("EXPN argument", command.text, true), (t) => `EXPN ${t}`)
    case "Help":
      return optionalText("HELP", "HELP topic", command.topic)
    case "Quit":
      return Either.right("QUIT")
    case "StartTls":
      return Either.right("STARTTLS")
    case "Auth":
      return authLine(command.mechanism, command.initialResponse)
    case "AuthResponse":
      return Either.right(base64(Redacted.value(command.response)))
    case "AuthCancel":
      return Either.right("*")
    case "Raw":
      return checkText("raw command", command.line, true)
  }
}

/**
 * The command line as the wire would carry it, without the CRLF, or why it cannot be sent.
 *
 * Every path checks its own fields with a precise name first; the final check here is the guarantee that holds even
 * if one of those checks were wrong: no line with CR, LF or NUL inside is ever returned.
 *
 * @since 0.1.0
 * @category encoding
 */
export const toLine = (command: SmtpCommand): Either.Either<string, InvalidInputError> =>
  Either.flatMap(
    commandLine(command),
    (line) => /[\r\n\0]/.test(line) ? invalid(`${verb(command)} command`, "it holds CR, LF or NUL") : Either.right(line)
  )

/**
 * Encodes a command to the bytes that go on the wire: its line in UTF-8 and CRLF.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encode = (command: SmtpCommand): Either.Either<Uint8Array, InvalidInputError> =>
  Either.map(toLine(command), (line) => utf8.encode(`${line}\r\n`))

/**
 * Encodes a group of commands to one buffer, to leave in one write when they are pipelined (RFC 2920). Fails on the
 * first command that cannot be sent, so nothing of the group is sent.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeGroup = (commands: Iterable<SmtpCommand>): Either.Either<Uint8Array, InvalidInputError> => {
  let text = ""
  for (const command of commands) {
    const line = toLine(command)
    if (Either.isLeft(line)) return Either.left(line.left)
    text += `${line.right}\r\n`
  }
  return Either.right(utf8.encode(text))
}

/**
 * The command as a transcript shows it: the line, with SASL payloads replaced by `<redacted>`.
 *
 * @since 0.1.0
 * @category encoding
 */
export const toTranscript = (command: SmtpCommand): string => {
  switch (command._tag) {
    case "Auth":
      return `AUTH ${command.mechanism.toUpperCase()}${command.initialResponse === undefined ? "" : " <redacted>"}`
    case "AuthResponse":
      return "<redacted>"
    case "Raw": {
      // A raw AUTH line carries credentials just like the typed one.
      if (verb(command) !== "AUTH") break
      const words = command.line.trim().split(/[ \t]+/)
      return words.length > 2 ? `${words[0]} ${words[1]} <redacted>` : command.line
    }
  }
  return Either.getOrElse(toLine(command), (error) => `<not sent: ${error.message}>`)
}
