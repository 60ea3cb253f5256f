/**
 * The byte transport under an SMTP connection: a service that opens sockets (TCP, implicit TLS) and upgrades them in
 * place (STARTTLS). The Node implementation lives in one internal module, so that replacing the runtime, or the whole
 * transport in a test, touches one place.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import type * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type * as Scope from "effect/Scope"
import type * as tls from "node:tls"
import * as internal from "./internal/nodeTransport.js"
import type { NetworkError, TimeoutError, TlsError } from "./SmtpError.js"

/**
 * How a connection uses TLS: `implicit` (TLS from the first byte, port 465), `starttls` (STARTTLS required: fail when
 * the server does not offer it), `opportunistic` (STARTTLS when offered, else plaintext) or `none`.
 *
 * @since 0.1.0
 * @category models
 */
export type TlsMode = "implicit" | "starttls" | "opportunistic" | "none"

/**
 * TLS settings. Certificates are verified by default; `rejectUnauthorized: false` turns that off (the CLI's
 * `--insecure`). Anything else is passed to Node's `tls.connect` as it is (Hunny's `ConnectTlsOpenSSL`).
 *
 * @since 0.1.0
 * @category models
 */
export interface TlsOptions {
  /** Verify the server's certificate chain and name. Default true. */
  readonly rejectUnauthorized?: boolean | undefined
  /** Trusted certificate authorities, replacing Node's defaults. */
  readonly ca?: string | Buffer | ReadonlyArray<string | Buffer> | undefined
  /** A client certificate and its key, for servers that ask for one. */
  readonly cert?: string | Buffer | undefined
  readonly key?: string | Buffer | undefined
  /** The lowest TLS version accepted, e.g. "TLSv1.2". */
  readonly minVersion?: tls.SecureVersion | undefined
  /** The name to send with SNI and to check the certificate against; default the host, unless it is an IP. */
  readonly servername?: string | undefined
  /** A ready-made secure context; takes precedence over `ca`, `cert` and `key`. */
  readonly secureContext?: tls.SecureContext | undefined
  /** Any other option of Node's `tls.connect`. */
  readonly extra?: Omit<tls.ConnectionOptions, "socket" | "host" | "port"> | undefined
}

/**
 * What the TLS layer negotiated.
 *
 * @since 0.1.0
 * @category models
 */
export interface TlsDetails {
  /** "TLSv1.3", "TLSv1.2", … */
  readonly protocol: string
  readonly cipher: string
  /** Whether the certificate was verified; false only when verification was turned off. */
  readonly authorized: boolean
  readonly certificate: {
    readonly subject: string
    readonly issuer: string
    readonly validFrom: string
    readonly validTo: string
    readonly subjectAltName: string | undefined
  } | undefined
}

/**
 * The two ends of a socket.
 *
 * @since 0.1.0
 * @category models
 */
export interface Endpoints {
  readonly remoteAddress: string
  readonly remotePort: number
  readonly localAddress: string
  readonly localPort: number
}

/**
 * An open socket. Reads and writes are Effects; the socket is closed when the scope that opened it closes.
 *
 * @since 0.1.0
 * @category models
 */
export interface SmtpSocket {
  /**
   * The next bytes from the server; fails when the server closed the connection or the socket failed, and with
   * `onTimeout()` when nothing came within `timeoutMillis`. The timer is the socket's own: it fires even when the
   * caller runs uninterruptibly, and costs no fiber.
   */
  readonly read: (
    timeoutMillis: number,
    onTimeout: () => TimeoutError
  ) => Effect.Effect<Uint8Array, NetworkError | TimeoutError>
  /**
   * Writes the chunks as one segment where possible and waits until the system took them (backpressure), or fails
   * with `onTimeout()` after `timeoutMillis`. When the system takes them at once there is nothing to wait for; a
   * failure of the socket after that reaches the next read. Once it succeeds, the caller may reuse the chunks.
   */
  readonly write: (
    chunks: ReadonlyArray<Uint8Array>,
    timeoutMillis: number,
    onTimeout: () => TimeoutError
  ) => Effect.Effect<void, NetworkError | TimeoutError>
  /**
   * Upgrades the socket to TLS in place (STARTTLS). Bytes received and not yet read are discarded first, as RFC 3207
   * §6 requires.
   */
  readonly upgradeToTls: (options: TlsOptions) => Effect.Effect<TlsDetails, TlsError | NetworkError>
  /** The TLS details when the socket is encrypted. */
  readonly tls: Effect.Effect<TlsDetails | undefined>
  readonly endpoints: Endpoints
  /**
   * The bytes received and not read yet, without waiting; undefined when there are none. Lets the session see a
   * reply that no command awaits before it writes the next command.
   */
  readonly readReady: Effect.Effect<Uint8Array | undefined>
  /** Closes the socket at once. Safe to call more than once. */
  readonly destroy: Effect.Effect<void>
}

/**
 * Where and how to connect.
 *
 * @since 0.1.0
 * @category models
 */
export interface ConnectOptions {
  readonly host: string
  readonly port: number
  /** A UNIX socket path; when set, `host` and `port` only name the server. */
  readonly path?: string | undefined
  /** Implicit TLS (port 465) when set; plain TCP otherwise. */
  readonly tls?: TlsOptions | undefined
  readonly connectTimeout: Duration.Duration
}

/**
 * The transport service: opens sockets.
 *
 * @since 0.1.0
 * @category tags
 */
export class SmtpTransport extends Context.Tag("effect-smtp/SmtpTransport")<SmtpTransport, {
  readonly connect: (
    options: ConnectOptions
  ) => Effect.Effect<SmtpSocket, NetworkError | TimeoutError | TlsError, Scope.Scope>
}>() {}

/**
 * The Node transport: `node:net` and `node:tls`.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerNode: Layer.Layer<SmtpTransport> = Layer.succeed(SmtpTransport, { connect: internal.connect })
