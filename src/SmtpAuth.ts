/**
 * Authentication (RFC 4954): SASL mechanisms as values, and the settings that say who signs in, with what, and whether
 * cleartext is acceptable. Provide `SmtpAuth.layer(settings)` and every connection `SmtpConnection.make` opens
 * authenticates after EHLO (and STARTTLS); or call `connection.authenticate(settings)` yourself.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import type * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Redacted from "effect/Redacted"
import * as internal from "./internal/sasl.js"

/**
 * A SASL mechanism: a sans-IO state machine over the 334 challenges.
 *
 * @since 0.1.0
 * @category models
 */
export type Mechanism = internal.Mechanism

/**
 * One authentication attempt of a mechanism.
 *
 * @since 0.1.0
 * @category models
 */
export type Exchange = internal.Exchange

/**
 * A mechanism's answer to a challenge.
 *
 * @since 0.1.0
 * @category models
 */
export type Step = internal.Step

/**
 * What a mechanism may use besides the credentials (authorization identity, NTLM workstation, test randomness).
 *
 * @since 0.1.0
 * @category models
 */
export type StartOptions = internal.StartOptions

/**
 * A user with a password, or with an OAuth access token: what a mechanism receives, and what an SMTP URL carries.
 *
 * @since 0.1.0
 * @category models
 */
export type Credentials = internal.Credentials

/**
 * What `Mechanism.start` takes: the credentials and the start options.
 *
 * @since 0.1.0
 * @category models
 */
export type StartInput = internal.StartInput

/**
 * The options of `choose`.
 *
 * @since 0.1.0
 * @category models
 */
export type ChooseOptions = internal.ChooseOptions

/**
 * PLAIN (RFC 4616).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const plain: Mechanism = internal.plain

/**
 * LOGIN (the de-facto "Username:" / "Password:" exchange).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const login: Mechanism = internal.login

/**
 * A CRAM mechanism over any digest Node knows (Poco's `loginUsingCRAM`): `cram("SHA512", 65)` is CRAM-SHA512.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const cram: (digest: string, strength: number) => Mechanism = internal.cram

/**
 * CRAM-MD5 (RFC 2195).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const cramMd5: Mechanism = internal.cramMd5

/**
 * CRAM-SHA1.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const cramSha1: Mechanism = internal.cramSha1

/**
 * CRAM-SHA256.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const cramSha256: Mechanism = internal.cramSha256

/**
 * XOAUTH2 (Google's and Microsoft's OAuth 2.0 bearer format).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const xoauth2: Mechanism = internal.xoauth2

/**
 * OAUTHBEARER (RFC 7628).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const oauthBearer: Mechanism = internal.oauthBearer

/**
 * SCRAM-SHA-1 (RFC 5802), verifying the server's signature.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const scramSha1: Mechanism = internal.scramSha1

/**
 * SCRAM-SHA-256 (RFC 7677), verifying the server's signature.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const scramSha256: Mechanism = internal.scramSha256

/**
 * NTLM (MS-NLMP, NTLMv2 responses).
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const ntlm: Mechanism = internal.ntlm

/**
 * A mechanism of your own.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const custom = internal.custom

/**
 * Every built-in mechanism.
 *
 * @since 0.1.0
 * @category mechanisms
 */
export const all: ReadonlyArray<Mechanism> = internal.all

/**
 * Chooses the mechanism: the pinned one, or the strongest both sides support.
 *
 * @since 0.1.0
 * @category choosing
 */
export const choose = internal.choose

/**
 * Who signs in and how: a user with a password, or with an OAuth access token taken from an Effect (so it can be
 * fetched or refreshed: after a refused token it is asked for once more and the login retried once).
 *
 * @since 0.1.0
 * @category models
 */
export type Settings =
  & (
    | { readonly username: string; readonly password: Redacted.Redacted<string> }
    | { readonly username: string; readonly token: Effect.Effect<Redacted.Redacted<string>> }
  )
  & {
    /** The mechanisms to use, most preferred first; by default all built-in ones, strongest first. */
    readonly preference?: ReadonlyArray<string> | undefined
    /** Use this mechanism or fail. */
    readonly mechanism?: string | undefined
    /** Custom mechanisms to choose from besides the built-in ones. */
    readonly mechanisms?: ReadonlyArray<Mechanism> | undefined
    /**
     * Authenticate over a connection without TLS. Off by default, on loopback too: it must be a conscious choice.
     */
    readonly allowCleartext?: boolean | undefined
    /** Options passed to the mechanism (authorization identity, NTLM workstation). */
    readonly startOptions?: StartOptions | undefined
  }

/**
 * The authentication settings every connection opened with them in context uses.
 *
 * @since 0.1.0
 * @category tags
 */
export class SmtpAuth extends Context.Tag("effect-smtp/SmtpAuth")<SmtpAuth, Settings>() {}

/**
 * A layer that makes every `SmtpConnection.make` authenticate with these settings.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (settings: Settings): Layer.Layer<SmtpAuth> => Layer.succeed(SmtpAuth, settings)

/**
 * The options of `Settings` besides who signs in.
 *
 * @since 0.1.0
 * @category models
 */
export type Options = Omit<Settings, "username" | "password" | "token">

/**
 * Settings from credentials, such as those of an SMTP URL (`SmtpConfig.fromUrl`); a token is sent as it is, never
 * refreshed.
 *
 * @since 0.1.0
 * @category constructors
 */
export const fromCredentials = (credentials: Credentials, options: Options = {}): Settings =>
  "token" in credentials
    ? { ...options, username: credentials.username, token: Effect.succeed(credentials.token) }
    : { ...options, username: credentials.username, password: credentials.password }

/**
 * Settings from Effect `Config`: the user from `SMTP_USER` and the password, redacted, from `SMTP_PASSWORD` (or the
 * names given).
 *
 * @since 0.1.0
 * @category config
 */
export const config = (
  names: { readonly user?: string | undefined; readonly password?: string | undefined } = {},
  options: Options = {}
): Config.Config<Settings> =>
  Config.map(
    Config.all({
      user: Config.string(names.user ?? "SMTP_USER"),
      password: Config.redacted(names.password ?? "SMTP_PASSWORD")
    }),
    ({ password, user }) => ({ ...options, username: user, password })
  )

/**
 * A layer with settings read from `Config`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig = (settings: Config.Config<Settings>): Layer.Layer<SmtpAuth, ConfigError.ConfigError> =>
  Layer.effect(SmtpAuth, settings)
