import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schedule from "effect/Schedule"
import type * as Scope from "effect/Scope"
import type { ChildProcess } from "node:child_process"
import { accessSync, constants, mkdtempSync, rmSync } from "node:fs"
import * as net from "node:net"
import { tmpdir } from "node:os"
import { delimiter, isAbsolute, join } from "node:path"
import * as tls from "node:tls"
import { isRunning } from "./processes.js"

const host = "127.0.0.1"

const announced = new Set<string>()

const isExecutable = (path: string): boolean => {
  try {
    accessSync(path, constants.X_OK)
    return true
  } catch {
    return false
  }
}

/** Whether `binary` (an absolute path, or a name looked up on PATH like `which` does) can be executed. */
export const hasBinary = (binary: string): boolean =>
  isAbsolute(binary)
    ? isExecutable(binary)
    : (process.env.PATH ?? "").split(delimiter).some((dir) => dir !== "" && isExecutable(join(dir, binary)))

/**
 * Whether the real server `name` can be used by integration tests: true when every one of `binaries` is installed.
 *
 * When one is missing, in CI (`CI=true`) this throws, naming `install`, because CI may skip nothing; elsewhere it
 * prints one loud line to stderr (once per process and server) and returns false, for `describe.skipIf(!available)`.
 */
export const requireServer = (name: string, binaries: ReadonlyArray<string>, install: string): boolean => {
  const missing = binaries.filter((binary) => !hasBinary(binary))
  if (missing.length === 0) return true
  const reason = `${name} is not installed (missing ${missing.join(", ")}); install it with: ${install}`
  if (process.env.CI === "true") {
    throw new Error(`${name} tests cannot run in CI: ${reason}`)
  }
  if (!announced.has(name)) {
    announced.add(name)
    process.stderr.write(`SKIPPED: ${name} tests — ${reason}\n`)
  }
  return false
}

/**
 * Connects to a test server on 127.0.0.1 (with TLS from the first byte when `secure` is given), reads the first reply
 * line, says QUIT: how the harnesses know a server is up.
 */
export const greetingLine = (
  port: number,
  secure?: { readonly ca: string; readonly servername: string }
): Effect.Effect<string, Error> =>
  Effect.async<string, Error>((resume) => {
    const socket = secure === undefined ? net.connect({ host, port }) : tls.connect({ host, port, ...secure })
    let buffer = ""
    let done = false
    const finish = (result: Effect.Effect<string, Error>) => {
      if (done) return
      done = true
      socket.end("QUIT\r\n")
      socket.destroySoon()
      resume(result)
    }
    socket.setTimeout(2_000, () => finish(Effect.fail(new Error(`port ${port}: no greeting within 2 s`))))
    socket.on("error", (error) => finish(Effect.fail(error)))
    socket.on("close", () => finish(Effect.fail(new Error(`port ${port}: closed before greeting: ${buffer}`))))
    socket.on("data", (chunk: Buffer) => {
      buffer += chunk.toString("latin1")
      const end = buffer.indexOf("\r\n")
      if (end >= 0) finish(Effect.succeed(buffer.slice(0, end)))
    })
    return Effect.sync(() => socket.destroy())
  })

/** A server's own folder in the temporary directory (`effect-smtp-${name}-…`), removed when the scope closes. */
export const serverDirectory = (name: string): Effect.Effect<string, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => mkdtempSync(join(tmpdir(), `effect-smtp-${name}-`))),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true, maxRetries: 5 }))
  )

/** The ports of a server that listens three ways. */
export interface ServerPorts {
  /** Offers no TLS at all. */
  readonly plain: number
  /** Offers STARTTLS. */
  readonly starttls: number
  /** Implicit TLS. */
  readonly smtps: number
}

/** A server that did not start; `portTaken` when someone else took one of its ports meanwhile. */
export class StartFailure extends Error {
  constructor(message: string, readonly portTaken: boolean) {
    super(message)
  }
}

const freePorts = (count: number): Effect.Effect<Array<number>, Error> =>
  Effect.tryPromise({
    try: async () => {
      const servers = Array.from({ length: count }, () => net.createServer())
      try {
        return await Promise.all(servers.map((server) =>
          new Promise<number>((resolve, reject) => {
            server.once("error", reject)
            server.listen(0, host, () => resolve((server.address() as net.AddressInfo).port))
          })
        ))
      } finally {
        await Promise.all(servers.map((server) => new Promise((resolve) => server.close(resolve))))
      }
    },
    catch: (cause) => new Error(`cannot find free ports on ${host}: ${String(cause)}`)
  })

/** Which of `ports` someone else holds now (a server's own bind errors may go to a log that does not exist). */
const takenPorts = (ports: ReadonlyArray<number>): Effect.Effect<Array<number>> =>
  Effect.promise(() =>
    Promise.all(ports.map((port) =>
      new Promise<number | undefined>((resolve) => {
        const server = net.createServer()
        server.once("error", () => resolve(port))
        server.listen(port, host, () => server.close(() => resolve(undefined)))
      })
    ))
  ).pipe(Effect.map((found) => found.filter((port) => port !== undefined)))

/**
 * Runs `attempt` (which starts a server) on three ports found free on 127.0.0.1. A port found free may be taken before
 * the server binds it: when `attempt` fails with a `StartFailure` that says so, it runs again (twice at most) with new
 * ports.
 */
export const withFreePorts = <A, R>(
  attempt: (ports: ServerPorts) => Effect.Effect<A, Error, R>
): Effect.Effect<A, Error, R> =>
  freePorts(3).pipe(
    Effect.flatMap(([plain = 0, starttls = 0, smtps = 0]) => attempt({ plain, starttls, smtps })),
    Effect.retry({ times: 2, while: (error) => error instanceof StartFailure && error.portTaken })
  )

export interface AwaitGreetingsOptions {
  /** The server's name, for the failure ("Postfix"). */
  readonly server: string
  /** Its process, and what to call it in the failure ("the master"). */
  readonly child: ChildProcess
  readonly process: string
  readonly ports: ServerPorts
  /** The only CA to trust on the implicit TLS port, and the name its certificate is for. */
  readonly tls: { readonly ca: string; readonly servername: string }
  readonly timeout: Duration.DurationInput
  /** When the process exited though none of its ports is taken: a line that says why ("" for none). */
  readonly diagnose?: Effect.Effect<string>
  /** The log for the failure, and its heading ("maillog"). */
  readonly log: { readonly name: string; readonly text: () => string }
}

/**
 * Waits until every port greets with 220 (TLS from the first byte on `smtps`), probing while the process runs. Fails
 * after `timeout`, or when the process exited, with a `StartFailure` that says what happened: how the process exited,
 * the last probe, the ports someone else holds, `diagnose`, and the log.
 */
export const awaitGreetings = (options: AwaitGreetingsOptions): Effect.Effect<void, StartFailure> => {
  const { child, ports } = options
  const greeted = (port: number, secure: boolean) =>
    greetingLine(port, secure ? options.tls : undefined).pipe(
      Effect.filterOrFail(
        (line) => line.startsWith("220"),
        (line) => new Error(`port ${port} greeted with: ${line}`)
      ),
      Effect.retry({ schedule: Schedule.spaced("25 millis"), while: () => isRunning(child) })
    )
  return Effect.all([greeted(ports.plain, false), greeted(ports.starttls, false), greeted(ports.smtps, true)], {
    concurrency: "unbounded",
    discard: true
  }).pipe(
    Effect.timeoutFail({
      duration: options.timeout,
      onTimeout: () => new Error("timed out waiting for the 220 greetings")
    }),
    Effect.catchAll((error) =>
      Effect.gen(function*() {
        const exited = !isRunning(child)
        const taken = exited ? yield* takenPorts([ports.plain, ports.starttls, ports.smtps]) : []
        const diagnosis = exited && taken.length === 0 && options.diagnose !== undefined ? yield* options.diagnose : ""
        return yield* Effect.fail(
          new StartFailure(
            [
              `${options.server} did not start on ${host} ports ${ports.plain}/${ports.starttls}/${ports.smtps}`,
              exited ? `${options.process} exited with ${child.exitCode ?? child.signalCode}` : "",
              `last probe: ${error.message}`,
              taken.length > 0 ? `ports already in use: ${taken.join(", ")}` : "",
              diagnosis,
              `--- ${options.log.name} ---\n${options.log.text()}`
            ].filter((line) => line !== "").join("\n"),
            taken.length > 0
          )
        )
      })
    )
  )
}
