import * as Effect from "effect/Effect"
import { accessSync, constants } from "node:fs"
import * as net from "node:net"
import { delimiter, isAbsolute, join } from "node:path"
import * as tls from "node:tls"

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
    const host = "127.0.0.1"
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
