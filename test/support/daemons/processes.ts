/**
 * The processes of the real-server harnesses: commands run to completion, and servers run as the leaders of their own
 * process groups, so that stopping one reaches every process it started, and so that none outlives the test process.
 */
import { Effect, Schedule } from "effect"
import type { Duration, Scope } from "effect"
import { execFile, spawn } from "node:child_process"
import type { ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import type * as net from "node:net"

/** Runs a command to completion (killed after 30 seconds); succeeds with its stdout, trimmed. */
export const run = (file: string, args: ReadonlyArray<string>, cwd?: string): Effect.Effect<string, Error> =>
  Effect.async<string, Error>((resume) => {
    const child = execFile(file, args, { cwd, timeout: 30_000 }, (error, stdout, stderr) => {
      if (error) {
        resume(Effect.fail(new Error(`${file} ${args.join(" ")} failed: ${error.message}\n${stdout}${stderr}`)))
      } else resume(Effect.succeed(stdout.trim()))
    })
    return Effect.sync(() => child.kill("SIGKILL"))
  })

/** The text of a file a server writes (its log, its pid file), or "" while there is none. */
export const readText = (file: string): string => {
  try {
    return fs.readFileSync(file, "utf8")
  } catch {
    return ""
  }
}

export const isRunning = (child: ChildProcess): boolean => child.exitCode === null && child.signalCode === null

/** Whether a process of the group is still running (zombies wait for PID 1 to reap them: they hold nothing). */
export const groupAlive = (pgid: number): boolean => {
  try {
    process.kill(-pgid, 0)
  } catch {
    return false
  }
  let entries: Array<string>
  try {
    entries = fs.readdirSync("/proc")
  } catch {
    return true
  }
  return entries.some((entry) => {
    if (!/^\d+$/.test(entry)) return false
    // "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses.
    const stat = readText(`/proc/${entry}/stat`)
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return fields[2] === String(pgid) && fields[0] !== "Z" && fields[0] !== "X"
  })
}

export const killGroup = (pgid: number, signal: NodeJS.Signals): void => {
  try {
    process.kill(-pgid, signal)
  } catch {
    // already gone
  }
}

/** Waits until the child and its whole process group are gone; kills the group if it outlives `grace`. */
export const awaitGroupGone = (
  child: ChildProcess,
  pgid: number,
  grace: Duration.DurationInput
): Effect.Effect<void> => {
  const gone = Effect.suspend(() => isRunning(child) || groupAlive(pgid) ? Effect.fail("alive") : Effect.void)
  return gone.pipe(
    Effect.retry(Schedule.spaced("20 millis")),
    Effect.timeout(grace),
    Effect.catchAll(() =>
      Effect.sync(() => killGroup(pgid, "SIGKILL")).pipe(
        Effect.zipRight(gone.pipe(Effect.retry(Schedule.spaced("20 millis")), Effect.timeout("2 seconds"))),
        Effect.ignore
      )
    )
  )
}

/** Process groups of running servers, killed if the test process exits without closing their scopes. */
const runningGroups = new Set<number>()
let exitHookInstalled = false
const killOnExit = (pgid: number): void => {
  runningGroups.add(pgid)
  if (exitHookInstalled) return
  exitHookInstalled = true
  process.once("exit", () => runningGroups.forEach((group) => killGroup(group, "SIGKILL")))
}

export interface SpawnGroupOptions {
  readonly cwd: string
  /** The file that takes the process's stdout and stderr (appended to), and a line if it cannot be spawned. */
  readonly output: string
  /**
   * `"pipe"`: stdin stays an open pipe (not keeping the test process alive), for a server that stops when it closes,
   * so that it cannot outlive this process. Default: `"ignore"`.
   */
  readonly stdin?: "ignore" | "pipe"
  /** How to stop it when the scope closes. */
  readonly stop: (child: ChildProcess) => Effect.Effect<void>
}

/**
 * Spawns a server as the leader of its own process group (detached), not keeping the test process alive, and stops it
 * with `stop` when the scope closes; the group is killed if the test process exits before that.
 */
export const spawnGroup = (
  file: string,
  args: ReadonlyArray<string>,
  options: SpawnGroupOptions
): Effect.Effect<ChildProcess, never, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const out = fs.openSync(options.output, "a")
      const child = spawn(file, args, {
        cwd: options.cwd,
        detached: true,
        stdio: [options.stdin ?? "ignore", out, out]
      })
      fs.closeSync(out)
      child.on("error", (error) => fs.appendFileSync(options.output, `spawn failed: ${error.message}\n`))
      child.unref()
      const stdin = child.stdin as net.Socket | null
      stdin?.unref()
      if (child.pid !== undefined) killOnExit(child.pid)
      return child
    }),
    (child) =>
      options.stop(child).pipe(
        Effect.ensuring(Effect.sync(() => child.pid !== undefined && runningGroups.delete(child.pid)))
      )
  )
