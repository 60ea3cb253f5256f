/**
 * The bench's servers and their own counts of what they received:
 *
 * - smtp-server (npm) in a child process (serverProcess.ts): it counts messages, octets and connections opened.
 * - A private Postfix, started by the test harness (test/support/daemons/postfix.ts): it delivers into a Maildir, and
 *   the count is the files delivered there.
 * - A private Exim (test/support/daemons/exim.ts) with `queue_only`: it takes every message into its queue and
 *   delivers none, and the count is the messages in its spool. Delivering at once (a delivery process per message)
 *   kept both cores busy and held every client, raw or not, to about 57 msg/s whatever the connections and the round
 *   trip (scratch runs, 2026-12-04); queued, it takes 100–500 msg/s. Its limits on messages and
 *   commands per connection are lifted too.
 *
 * `startServer` also puts the delay proxy (delayProxy.ts) in front of the server, in a child process of its own.
 */
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as fs from "node:fs"
import * as path from "node:path"
import { startExim } from "../test/support/daemons/exim.js"
import { startPostfix } from "../test/support/daemons/postfix.js"
import type { Child } from "./child.js"
import { startChild } from "./child.js"
import { MESSAGE_SIZE } from "./messages.js"

const SERVER_PROCESS = new URL("./serverProcess.js", import.meta.url)

/** How long a Maildir count waits for the last deliveries (delivery is asynchronous). */
const DELIVERY_TIMEOUT_MS = 60_000

/** A server's own count of what it received, checked after every run against the total sent to it so far. */
export interface Tally {
  /** Adds `count` messages to the total sent, then waits until the server has them all; throws otherwise. */
  readonly check: (count: number) => Promise<void>
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

/** smtp-server in its child: it counts messages and octets (after removing dot-stuffing and the terminator). */
export const smtpServerTally = (server: Child): Tally => {
  let sent = 0
  return {
    check: async (count) => {
      sent += count
      const stats = await server.request("stats")
      if (stats.messages !== sent || stats.octets !== sent * MESSAGE_SIZE) {
        throw new Error(
          `smtp-server received ${stats.messages} messages, ${stats.octets} octets; ` +
            `sent ${sent} messages, ${sent * MESSAGE_SIZE} octets`
        )
      }
    }
  }
}

/** A Maildir a real server delivers into: waits (up to a minute) until the files of every message sent are there. */
export const maildirTally = (server: string, maildir: string, log: () => string): Tally => {
  const delivered = (): number =>
    ["new", "cur"].reduce((n, folder) => {
      try {
        return n + fs.readdirSync(path.join(maildir, folder)).length
      } catch {
        return n
      }
    }, 0)
  let sent = 0
  return {
    check: async (count) => {
      sent += count
      const deadline = performance.now() + DELIVERY_TIMEOUT_MS
      let found = delivered()
      while (found < sent && performance.now() < deadline) {
        await sleep(20)
        found = delivered()
      }
      if (found !== sent) throw new Error(`${server} delivered ${found} messages, sent ${sent}\n${log()}`)
    }
  }
}

/**
 * Exim with `queue_only`: the `-H` files (one per message) in its spool, where each message waits for a queue run that
 * never comes. They stay there until Exim stops (removing them costs about as much as the run that sent them).
 */
export const eximSpoolTally = (spool: string, log: () => string): Tally => {
  const queued = (): number => {
    try {
      return fs.readdirSync(path.join(spool, "input")).filter((file) => file.endsWith("-H")).length
    } catch {
      return 0
    }
  }
  let sent = 0
  return {
    check: async (count) => {
      sent += count
      const found = queued()
      if (found !== sent) throw new Error(`Exim queued ${found} messages, sent ${sent}\n${log()}`)
    }
  }
}

export type ServerName = "smtp-server" | "Postfix" | "Exim"

export interface BenchServer {
  readonly name: ServerName
  /** The server's own port on 127.0.0.1: loopback, no proxy. */
  readonly port: number
  /** The delay proxy's port, in front of `port`. */
  readonly proxy: number
  readonly tally: Tally
  /**
   * Connections opened so far through `port` (`proxied: false`) or through the proxy, where something counts them:
   * smtp-server counts both, the proxy its own. Undefined where nothing counts (Postfix and Exim without the proxy).
   */
  readonly opened: (proxied: boolean) => (() => Promise<number>) | undefined
  /** Stops the proxy and the server. */
  readonly close: () => Promise<void>
}

/**
 * Exim's defaults leave every message past the 10th of a connection in the queue undelivered, refuse a MAIL past the
 * 1,000th and drop a connection after its 10th command that is not a transaction (the NOOPs of `roundTrip`).
 */
const EXIM_LIMITS = {
  smtp_accept_queue_per_connection: "0",
  smtp_accept_max_per_connection: "100000000",
  smtp_accept_max_nonmail: "100000000",
  queue_only: "true"
}

/** Starts `server` (and the delay proxy in front of it, `delayMs` each way); `close` stops both. */
export const startServer = async (name: ServerName, delayMs: number): Promise<BenchServer> => {
  const scope = Effect.runSync(Scope.make())
  const children: Array<Child> = []
  const close = async (): Promise<void> => {
    for (const c of children.reverse()) await c.close()
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
  try {
    const inScope = <A>(start: Effect.Effect<A, Error, Scope.Scope>): Promise<A> =>
      Effect.runPromise(Scope.extend(start, scope))
    let port: number
    let tally: Tally
    let counted: Child | undefined
    if (name === "smtp-server") {
      const server = await startChild(SERVER_PROCESS, ["smtp-server"])
      children.push(server)
      port = Number(server.ready.port)
      tally = smtpServerTally(server)
      counted = server
    } else if (name === "Postfix") {
      const postfix = await inScope(startPostfix())
      port = postfix.ports.plain
      tally = maildirTally(name, path.join(postfix.directory, "mail", "inbox"), postfix.log)
    } else {
      const exim = await inScope(startExim({ main: EXIM_LIMITS }))
      port = exim.ports.plain
      tally = eximSpoolTally(path.join(exim.directory, "spool"), exim.log)
    }
    const proxy = await startChild(SERVER_PROCESS, ["proxy", String(port), String(delayMs)])
    children.push(proxy)
    const count = (child: Child) => async (): Promise<number> => Number((await child.request("stats")).connections)
    return {
      name,
      port,
      proxy: Number(proxy.ready.port),
      tally,
      opened: (proxied) => counted !== undefined ? count(counted) : proxied ? count(proxy) : undefined,
      close
    }
  } catch (error) {
    await close()
    throw error
  }
}
