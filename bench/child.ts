/**
 * Bench helpers in child processes: servers, proxies and the memory client each run in their own Node process, so
 * that their CPU time and memory are not the measured client's. Parent and child talk over the IPC channel of
 * `fork`: the child sends `{ type: "ready", ... }` once it listens, then answers requests `{ id, command }` with
 * `{ id, ... }`.
 */
import type { ChildProcess } from "node:child_process"
import { fork } from "node:child_process"

/** A message from a child; `type: "error"` carries `message`. */
export type Message = Readonly<Record<string, unknown>>

export interface Child {
  /** What the child sent with `ready` (e.g. its port). */
  readonly ready: Message
  /** Sends `command` and waits for the answer; fails after `timeoutMs`. */
  readonly request: (command: string, timeoutMs?: number) => Promise<Message>
  /** Asks the child to close and exit; kills it when it has not exited within 5 seconds. */
  readonly close: () => Promise<void>
}

const live = new Set<ChildProcess>()
// A bench that throws must not leave its servers running.
process.once("exit", () => {
  for (const child of live) child.kill("SIGKILL")
})

const exited = (child: ChildProcess, timeoutMs: number): Promise<boolean> =>
  child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve(true)
    : new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs)
      child.once("exit", () => {
        clearTimeout(timer)
        resolve(true)
      })
    })

const kill = async (child: ChildProcess): Promise<void> => {
  if (!(await exited(child, 5_000))) {
    child.kill("SIGKILL")
    await exited(child, 5_000)
  }
  live.delete(child)
}

const start = (script: URL, args: ReadonlyArray<string>, execArgv: ReadonlyArray<string> = []): ChildProcess => {
  const child = fork(script, [...args], { execArgv: [...execArgv], stdio: ["ignore", "inherit", "inherit", "ipc"] })
  live.add(child)
  return child
}

/** Waits for the first message of `type` ("ready", "result"), or fails on an error message, exit or timeout. */
const first = (child: ChildProcess, type: string, what: string, timeoutMs: number): Promise<Message> =>
  new Promise((resolve, reject) => {
    const done = (error: Error | undefined, message?: Message) => {
      clearTimeout(timer)
      child.off("message", onMessage)
      child.off("exit", onExit)
      if (error === undefined) resolve(message!)
      else reject(error)
    }
    const onMessage = (message: Message) => {
      if (message.type === type) done(undefined, message)
      else if (message.type === "error") done(new Error(`${what}: ${String(message.message)}`))
    }
    const onExit = (code: number | null, signal: string | null) =>
      done(new Error(`${what} exited with ${code ?? signal} before it sent "${type}"`))
    const timer = setTimeout(() => {
      child.kill("SIGKILL")
      done(new Error(`${what} sent no "${type}" within ${timeoutMs} ms`))
    }, timeoutMs)
    child.on("message", onMessage)
    child.once("exit", onExit)
  })

/** Forks `script` with `args` and waits until it is ready (10 seconds at most). */
export const startChild = async (script: URL, args: ReadonlyArray<string>): Promise<Child> => {
  const what = `${script.pathname.split("/").pop()} ${args.join(" ")}`
  const child = start(script, args)
  let ready: Message
  try {
    ready = await first(child, "ready", what, 10_000)
  } catch (error) {
    await kill(child)
    throw error
  }
  let nextId = 0
  const pending = new Map<number, (message: Message) => void>()
  child.on("message", (message: Message) => {
    if (typeof message.id === "number") pending.get(message.id)?.(message)
  })
  const request = (command: string, timeoutMs = 10_000): Promise<Message> =>
    new Promise((resolve, reject) => {
      const id = nextId++
      const timer = setTimeout(() => {
        pending.delete(id)
        reject(new Error(`${what}: no answer to "${command}" within ${timeoutMs} ms`))
      }, timeoutMs)
      pending.set(id, (message) => {
        clearTimeout(timer)
        pending.delete(id)
        if (message.type === "error") reject(new Error(`${what}: ${String(message.message)}`))
        else resolve(message)
      })
      child.send({ id, command })
    })
  const close = async (): Promise<void> => {
    if (child.connected) child.send({ command: "close" })
    await kill(child)
  }
  return { ready, request, close }
}

/** Forks `script` with `args` and waits for its one `result` message and its exit; kills it after `timeoutMs`. */
export const runChild = async (
  script: URL,
  args: ReadonlyArray<string>,
  timeoutMs: number,
  execArgv: ReadonlyArray<string> = []
): Promise<Message> => {
  const what = `${script.pathname.split("/").pop()} ${args.join(" ")}`
  const child = start(script, args, execArgv)
  try {
    return await first(child, "result", what, timeoutMs)
  } finally {
    await kill(child)
  }
}

/**
 * The child's side: sends `ready` with `fields`, answers `stats` with `stats()`, and on `close` (or when the parent
 * goes away) calls `close` and exits.
 */
export const serve = (fields: Message, stats: () => Message, close: () => Promise<void>): void => {
  const send = (message: Message) => process.send?.(message)
  const exit = () => {
    void close().finally(() => process.exit(0))
  }
  process.on("message", (message: Message) => {
    if (message.command === "close") exit()
    else if (message.command === "stats") send({ id: message.id, type: "stats", ...stats() })
    else send({ id: message.id, type: "error", message: `unknown command ${String(message.command)}` })
  })
  process.once("disconnect", exit)
  send({ type: "ready", ...fields })
}

/** The child's side of the end: sends `message` to the parent, then exits with `code` once it is out. */
export const finish = (message: Message, code = 0): void => {
  if (process.send === undefined) process.exit(code)
  else process.send(message, () => process.exit(code))
}

/** The child's side of a failure: reports it to the parent and exits non-zero. */
export const fail = (error: unknown): void =>
  finish({ type: "error", message: error instanceof Error ? error.stack ?? error.message : String(error) }, 1)
