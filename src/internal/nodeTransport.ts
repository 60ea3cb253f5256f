/**
 * The Node transport: sockets from `node:net` and `node:tls`, turned into Effects. This is the only module that
 * touches Node's networking; an Effect 4 port, or another runtime, replaces this file.
 *
 * `@effect/platform`'s Socket does not fit here: STARTTLS needs the raw `net.Socket` to hand to `tls.connect`, and
 * the unread bytes must be dropped at that exact moment (RFC 3207 §6).
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as net from "node:net"
import * as tls from "node:tls"
import { NetworkError, TimeoutError, TlsError } from "../SmtpError.js"
import type { TlsFailure } from "../SmtpError.js"
import type { ConnectOptions, SmtpSocket, TlsDetails, TlsOptions } from "../SmtpTransport.js"

/** Unread bytes above which the socket is paused until the reader catches up. */
const HIGH_WATER_MARK = 1024 * 1024

const UNTRUSTED = new Set([
  "DEPTH_ZERO_SELF_SIGNED_CERT",
  "SELF_SIGNED_CERT_IN_CHAIN",
  "UNABLE_TO_VERIFY_LEAF_SIGNATURE",
  "UNABLE_TO_GET_ISSUER_CERT",
  "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
  "CERT_UNTRUSTED",
  "CERT_SIGNATURE_FAILURE",
  "CERT_REJECTED"
])
const EXPIRED = new Set(["CERT_HAS_EXPIRED", "CERT_NOT_YET_VALID"])

const errorCode = (error: unknown): string | undefined =>
  typeof error === "object" && error !== null && "code" in error && typeof error.code === "string"
    ? error.code
    : undefined

/** Classifies a failure during a TLS handshake. */
const tlsError = (host: string, error: unknown): TlsError => {
  const code = errorCode(error)
  const failure: TlsFailure = code === undefined
    ? "handshake"
    : UNTRUSTED.has(code)
    ? "untrusted-certificate"
    : EXPIRED.has(code)
    ? "expired-certificate"
    : code === "ERR_TLS_CERT_ALTNAME_INVALID"
    ? "wrong-host-name"
    : "handshake"
  return new TlsError({ failure, host, code, cause: error })
}

const networkError = (operation: string, error: unknown): NetworkError =>
  new NetworkError({ operation, code: errorCode(error), cause: error })

const tlsConnectOptions = (host: string, options: TlsOptions): tls.ConnectionOptions => {
  const servername = options.servername ?? (net.isIP(host) === 0 ? host : undefined)
  const connectOptions: tls.ConnectionOptions = {
    ...options.extra,
    rejectUnauthorized: options.rejectUnauthorized ?? true
  }
  if (servername !== undefined) connectOptions.servername = servername
  if (options.ca !== undefined) connectOptions.ca = options.ca as tls.ConnectionOptions["ca"]
  if (options.cert !== undefined) connectOptions.cert = options.cert
  if (options.key !== undefined) connectOptions.key = options.key
  if (options.minVersion !== undefined) connectOptions.minVersion = options.minVersion
  if (options.secureContext !== undefined) connectOptions.secureContext = options.secureContext
  return connectOptions
}

const tlsDetails = (socket: tls.TLSSocket): TlsDetails => {
  const certificate = socket.getPeerCertificate()
  const name = (entries: unknown): string =>
    typeof entries === "object" && entries !== null
      ? Object.entries(entries).map(([key, value]) => `${key}=${String(value)}`).join(", ")
      : ""
  return {
    protocol: socket.getProtocol() ?? "unknown",
    cipher: socket.getCipher().name,
    authorized: socket.authorized,
    certificate: certificate === null || Object.keys(certificate).length === 0 ? undefined : {
      subject: name(certificate.subject),
      issuer: name(certificate.issuer),
      validFrom: certificate.valid_from,
      validTo: certificate.valid_to,
      subjectAltName: certificate.subjectaltname
    }
  }
}

/**
 * Reads from whichever socket is current (plain, then TLS after an upgrade): bytes are queued as they arrive, and
 * `read` takes the next chunk or waits for one.
 */
class SocketReader {
  private chunks: Array<Uint8Array> = []
  private buffered = 0
  private failure: NetworkError | undefined
  private waiter: ((result: Uint8Array | NetworkError) => void) | undefined
  private socket: net.Socket

  constructor(socket: net.Socket) {
    this.socket = socket
    this.attach(socket)
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.waiter !== undefined) {
      const waiter = this.waiter
      this.waiter = undefined
      waiter(chunk)
      return
    }
    this.chunks.push(chunk)
    this.buffered += chunk.length
    if (this.buffered > HIGH_WATER_MARK) this.socket.pause()
  }

  private readonly onEnd = (): void => {
    this.fail(
      new NetworkError({ operation: "read", code: "EOF", cause: new Error("the server closed the connection") })
    )
  }

  private readonly onError = (error: Error): void => {
    this.fail(networkError("read", error))
  }

  private readonly onClose = (): void => {
    this.fail(new NetworkError({ operation: "read", code: "ECLOSED", cause: new Error("the connection is closed") }))
  }

  private fail(error: NetworkError): void {
    if (this.failure === undefined) this.failure = error
    if (this.waiter !== undefined) {
      const waiter = this.waiter
      this.waiter = undefined
      waiter(this.failure)
    }
  }

  attach(socket: net.Socket): void {
    this.socket = socket
    socket.on("data", this.onData)
    socket.on("end", this.onEnd)
    socket.on("error", this.onError)
    socket.on("close", this.onClose)
  }

  /** Stops reading from the current socket and drops every unread byte (RFC 3207 §6), for a TLS upgrade. */
  detach(): void {
    this.socket.off("data", this.onData)
    this.socket.off("end", this.onEnd)
    this.socket.off("error", this.onError)
    this.socket.off("close", this.onClose)
    this.chunks = []
    this.buffered = 0
  }

  /** The bytes queued and not read yet, joined, without waiting; undefined when there are none. */
  readReady(): Uint8Array | undefined {
    if (this.chunks.length === 0) return undefined
    const ready = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks)
    this.chunks = []
    this.buffered = 0
    if (this.socket.isPaused()) this.socket.resume()
    return ready
  }

  read(timeoutMillis: number, onTimeout: () => TimeoutError): Effect.Effect<Uint8Array, NetworkError | TimeoutError> {
    return Effect.async<Uint8Array, NetworkError | TimeoutError>((resume) => {
      const chunk = this.chunks.shift()
      if (chunk !== undefined) {
        this.buffered -= chunk.length
        if (this.buffered <= HIGH_WATER_MARK && this.socket.isPaused()) this.socket.resume()
        return resume(Effect.succeed(chunk))
      }
      if (this.failure !== undefined) return resume(Effect.fail(this.failure))
      const timer = setTimeout(() => {
        this.waiter = undefined
        resume(Effect.fail(onTimeout()))
      }, timeoutMillis)
      this.waiter = (result) => {
        clearTimeout(timer)
        resume(result instanceof NetworkError ? Effect.fail(result) : Effect.succeed(result))
      }
      return Effect.sync(() => {
        clearTimeout(timer)
        this.waiter = undefined
      })
    })
  }
}

const write = (
  socket: net.Socket,
  chunks: ReadonlyArray<Uint8Array>,
  timeoutMillis: number,
  onTimeout: () => TimeoutError
): Effect.Effect<void, NetworkError | TimeoutError> =>
  Effect.async<void, NetworkError | TimeoutError>((resume) => {
    if (socket.destroyed || !socket.writable) {
      return resume(Effect.fail(new NetworkError({ operation: "write", code: "ECLOSED" })))
    }
    const last = chunks.length - 1
    if (last < 0) return resume(Effect.void)
    // Set only while this effect waits for the write's callback; Node never calls it during `write`.
    let pending: ((error: Error | null | undefined) => void) | undefined
    socket.cork()
    for (let i = 0; i < last; i++) socket.write(chunks[i]!)
    socket.write(chunks[last]!, (error) => pending?.(error))
    socket.uncork()
    // Everything went to the kernel at once (the usual case for commands): the chunks are free again and there is
    // nothing to wait for. A later failure of the socket reaches the next read.
    if (socket.writableLength === 0) return resume(Effect.void)
    const timer = setTimeout(() => {
      pending = undefined
      resume(Effect.fail(onTimeout()))
    }, timeoutMillis)
    pending = (error) => {
      pending = undefined
      clearTimeout(timer)
      resume(error ? Effect.fail(networkError("write", error)) : Effect.void)
    }
    return Effect.sync(() => {
      pending = undefined
      clearTimeout(timer)
    })
  })

/** Waits for a new socket to connect (and finish its handshake, for TLS), failing with the right error. */
const awaitConnect = (
  socket: net.Socket,
  event: "connect" | "secureConnect",
  fail: (error: unknown) => NetworkError | TlsError
): Effect.Effect<void, NetworkError | TlsError> =>
  Effect.async<void, NetworkError | TlsError>((resume) => {
    const onReady = () => {
      socket.off("error", onError)
      resume(Effect.void)
    }
    const onError = (error: Error) => {
      socket.off(event, onReady)
      resume(Effect.fail(fail(error)))
    }
    socket.once(event, onReady)
    socket.once("error", onError)
    return Effect.sync(() => {
      socket.off(event, onReady)
      socket.off("error", onError)
    })
  })

/** Opens a socket, plain or with implicit TLS; it is destroyed when the scope closes. */
export const connect = (
  options: ConnectOptions
): Effect.Effect<SmtpSocket, NetworkError | TimeoutError | TlsError, Scope.Scope> =>
  Effect.gen(function*() {
    const implicitTls = options.tls
    let current: net.Socket = yield* Effect.acquireRelease(
      Effect.sync(() =>
        implicitTls === undefined
          ? options.path === undefined
            ? net.connect({ host: options.host, port: options.port })
            : net.connect({ path: options.path })
          : options.path === undefined
          ? tls.connect({ host: options.host, port: options.port, ...tlsConnectOptions(options.host, implicitTls) })
          : tls.connect({ path: options.path, ...tlsConnectOptions(options.host, implicitTls) })
      ),
      (socket) => Effect.sync(() => socket.destroy())
    )
    // Errors are also handled by the reader once it is attached; until then this keeps an early one from throwing.
    current.on("error", () => {})
    if (options.path === undefined) current.setNoDelay(true)
    yield* awaitConnect(
      current,
      implicitTls === undefined ? "connect" : "secureConnect",
      (error) =>
        implicitTls !== undefined && errorCode(error) !== "ECONNREFUSED" && errorCode(error) !== "ECONNRESET"
          ? tlsError(implicitTls.servername ?? options.host, error)
          : networkError("connect", error)
    ).pipe(
      Effect.interruptible,
      Effect.timeoutFail({
        duration: options.connectTimeout,
        onTimeout: () =>
          new TimeoutError({
            phase: "connect",
            timeoutMillis: Duration.toMillis(options.connectTimeout),
            mayHaveBeenDelivered: false
          })
      })
    )
    const reader = new SocketReader(current)
    let secured: TlsDetails | undefined = current instanceof tls.TLSSocket ? tlsDetails(current) : undefined
    const endpoints = {
      remoteAddress: current.remoteAddress ?? options.host,
      remotePort: current.remotePort ?? options.port,
      localAddress: current.localAddress ?? "",
      localPort: current.localPort ?? 0
    }
    const socket: SmtpSocket = {
      read: (timeoutMillis, onTimeout) => reader.read(timeoutMillis, onTimeout),
      readReady: Effect.sync(() => reader.readReady()),
      write: (chunks, timeoutMillis, onTimeout) =>
        Effect.suspend(() => write(current, chunks, timeoutMillis, onTimeout)),
      upgradeToTls: (tlsOptions) =>
        Effect.gen(function*() {
          reader.detach()
          const plain = current
          const upgraded = tls.connect({ socket: plain, ...tlsConnectOptions(options.host, tlsOptions) })
          upgraded.on("error", () => {})
          current = upgraded
          yield* awaitConnect(upgraded, "secureConnect", (error) =>
            tlsError(tlsOptions.servername ?? options.host, error))
          reader.attach(upgraded)
          secured = tlsDetails(upgraded)
          return secured
        }),
      tls: Effect.sync(() =>
        secured
      ),
      endpoints,
      destroy: Effect.sync(() => {
        current.destroy()
      })
    }
    // Destroying the TLS socket also destroys the plain one under it; the scope's finalizer above covers the plain one
    // when no upgrade happened.
    yield* Effect.addFinalizer(() => socket.destroy)
    return socket
  })
