/**
 * Connection settings from a URL (`smtps://user:password@mail.example.org`) or from Effect `Config`. The schemes are
 * Qore's, with their ports and TLS meaning; credentials are percent-decoded and held as `Redacted`.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Either from "effect/Either"
import * as Redacted from "effect/Redacted"
import type * as SmtpAuth from "./SmtpAuth.js"
import { InvalidInputError } from "./SmtpError.js"
import type { TlsMode } from "./SmtpTransport.js"

/**
 * What a URL says: where to connect, how to use TLS, and the credentials if it carried them.
 *
 * @since 0.1.0
 * @category models
 */
export interface UrlSettings {
  readonly host: string
  readonly port: number
  readonly tls: TlsMode
  /** The user and the password of the URL, the password redacted. */
  readonly credentials: SmtpAuth.Credentials | undefined
}

/**
 * The schemes and what they mean: the default port and the TLS mode.
 *
 * @since 0.1.0
 * @category constants
 */
export const schemes: Readonly<Record<string, { readonly port: number; readonly tls: TlsMode }>> = {
  smtp: { port: 25, tls: "opportunistic" },
  smtps: { port: 465, tls: "implicit" },
  smtptls: { port: 25, tls: "starttls" },
  esmtp: { port: 587, tls: "opportunistic" },
  esmtps: { port: 465, tls: "implicit" },
  esmtptls: { port: 587, tls: "starttls" }
}

const invalid = (reason: string) => Either.left(new InvalidInputError({ field: "SMTP URL", reason }))

const decode = (part: string): string | undefined => {
  try {
    return decodeURIComponent(part)
  } catch {
    return undefined
  }
}

/**
 * Reads a URL such as `smtptls://user:secret@[2001:db8::1]:2525`. An unknown scheme, a user without a password (or
 * the reverse), a path or a query are errors that say so; the error never shows the password.
 *
 * @since 0.1.0
 * @category parsers
 */
export const fromUrl = (url: string): Either.Either<UrlSettings, InvalidInputError> => {
  if (/[\x00-\x1F\x7F\s]/.test(url)) return invalid("it holds white space or a control character")
  const scheme = /^([A-Za-z][A-Za-z0-9+.-]*):\/\//.exec(url)?.[1]?.toLowerCase()
  if (scheme === undefined) return invalid("it must start with a scheme, e.g. smtp://")
  const meaning = schemes[scheme]
  if (meaning === undefined) {
    return invalid(`unknown scheme "${scheme}"; use one of ${Object.keys(schemes).join(", ")}`)
  }
  if (!URL.canParse(url)) return invalid("it is not a valid URL")
  const parsed = new URL(url)
  if (parsed.hostname === "") return invalid("it has no host")
  if ((parsed.pathname !== "" && parsed.pathname !== "/") || parsed.search !== "" || parsed.hash !== "") {
    return invalid("it must not have a path, a query or a fragment")
  }
  const hasUser = parsed.username !== ""
  const hasPassword = parsed.password !== "" || /^[^/]*\/\/[^@/]*:@/.test(url)
  if (hasUser !== hasPassword) {
    return invalid(hasUser ? "it names a user but no password" : "it has a password but no user")
  }
  let credentials: SmtpAuth.Credentials | undefined
  if (hasUser) {
    const user = decode(parsed.username)
    const password = decode(parsed.password)
    if (user === undefined || password === undefined) return invalid("its credentials are not valid percent-encoding")
    credentials = { username: user, password: Redacted.make(password) }
  }
  const host = parsed.hostname.startsWith("[") ? parsed.hostname.slice(1, -1) : parsed.hostname
  const port = parsed.port === "" ? meaning.port : Number(parsed.port)
  return Either.right({ host, port, tls: meaning.tls, credentials })
}

/**
 * A `Config` that reads an SMTP URL (from `SMTP_URL` by default) into connection settings, failing with a clear
 * message when the URL is invalid.
 *
 * @since 0.1.0
 * @category config
 */
export const url = (name = "SMTP_URL"): Config.Config<UrlSettings> =>
  Config.redacted(name).pipe(
    Config.mapOrFail((value) =>
      Either.mapLeft(fromUrl(Redacted.value(value)), (error) => ConfigError.InvalidData([], error.reason))
    )
  )
