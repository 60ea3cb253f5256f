/**
 * A TCP proxy on 127.0.0.1 that holds every chunk it reads for a fixed delay before it writes it on, in each
 * direction: with 5 ms each way, a 10 ms round trip, as between two machines in one region. Chunks keep their order
 * and their boundaries (one write per chunk read, Nagle off on both sides), so a client that batches its commands
 * into one write still sends one segment train.
 */
import * as net from "node:net"

export interface DelayProxy {
  readonly port: number
  /** Connections accepted so far. */
  readonly connections: () => number
  readonly close: () => Promise<void>
}

/** Past this many octets queued or unwritten in one direction, the proxy stops reading the other side. */
const HIGH_WATER = 4 * 1024 * 1024

/** A chunk, or the end of the stream (`undefined`), and when it may go on. */
interface Held {
  readonly chunk: Buffer | undefined
  readonly due: number
}

/** Forwards `from` to `to`, each chunk `delayMs` after it arrived, in order. */
const pipeDelayed = (from: net.Socket, to: net.Socket, delayMs: number): void => {
  const held: Array<Held> = []
  let head = 0
  let queued = 0
  let timer: NodeJS.Timeout | NodeJS.Immediate | undefined
  const flush = () => {
    timer = undefined
    if (to.destroyed) {
      held.length = 0
      return
    }
    const now = performance.now()
    while (head < held.length && held[head]!.due <= now) {
      const { chunk } = held[head++]!
      if (chunk === undefined) {
        to.end()
      } else {
        queued -= chunk.length
        to.write(chunk)
      }
    }
    if (head === held.length) {
      held.length = 0
      head = 0
    } else {
      schedule()
    }
    if (from.isPaused() && queued + to.writableLength < HIGH_WATER) from.resume()
  }
  const schedule = () => {
    if (timer !== undefined || head === held.length) return
    const wait = held[head]!.due - performance.now()
    // A timer can fire up to a millisecond early (it counts from the event loop's cached clock) and another timer
    // would then add a millisecond or more; the last stretch is waited out turn by turn of the event loop instead.
    timer = wait > 1 ? setTimeout(flush, Math.ceil(wait)) : setImmediate(flush)
  }
  from.on("data", (chunk: Buffer) => {
    held.push({ chunk, due: performance.now() + delayMs })
    queued += chunk.length
    if (queued + to.writableLength >= HIGH_WATER) from.pause()
    schedule()
  })
  let ended = false
  const end = () => {
    if (ended) return
    ended = true
    held.push({ chunk: undefined, due: performance.now() + delayMs })
    schedule()
  }
  from.on("end", end)
  // A side that closes without an end (a reset) ends the other side too, once what was held went on.
  from.on("close", end)
  to.on("drain", () => {
    if (from.isPaused() && queued + to.writableLength < HIGH_WATER) from.resume()
  })
}

/** Starts the proxy on a free port of 127.0.0.1, forwarding to `targetPort` on 127.0.0.1. */
export const startDelayProxy = (targetPort: number, delayMs: number): Promise<DelayProxy> => {
  const sockets = new Set<net.Socket>()
  let connections = 0
  const server = net.createServer((client) => {
    connections++
    const upstream = net.connect({ host: "127.0.0.1", port: targetPort, noDelay: true })
    client.setNoDelay(true)
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on("error", () => {
        client.destroy()
        upstream.destroy()
      })
      socket.on("close", () => sockets.delete(socket))
    }
    pipeDelayed(client, upstream, delayMs)
    pipeDelayed(upstream, client, delayMs)
  })
  return new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      resolve({
        port: (server.address() as net.AddressInfo).port,
        connections: () => connections,
        close: () =>
          new Promise((done) => {
            for (const socket of sockets) socket.destroy()
            server.close(() => done())
          })
      })
    })
  })
}
