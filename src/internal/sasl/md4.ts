/**
 * MD4 (RFC 1320), which NTLM needs for the NT hash of the password. Node's `crypto` cannot be relied on for it: under
 * OpenSSL 3 it lives in the legacy provider, which Node 17+ does not load (`createHash("md4")` throws
 * "digital envelope routines::unsupported"). MD4 is broken as a hash; NTLM uses it only because MS-NLMP says so.
 */

const rotateLeft = (value: number, shift: number): number => (value << shift) | (value >>> (32 - shift))

const f = (x: number, y: number, z: number): number => (x & y) | (~x & z)
const g = (x: number, y: number, z: number): number => (x & y) | (x & z) | (y & z)
const h = (x: number, y: number, z: number): number => x ^ y ^ z

/** Each round: its function, its additive constant, the order it reads the block's words in, and its four shifts. */
const rounds: ReadonlyArray<
  readonly [(x: number, y: number, z: number) => number, number, ReadonlyArray<number>, ReadonlyArray<number>]
> = [
  [f, 0, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15], [3, 7, 11, 19]],
  [g, 0x5a827999, [0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15], [3, 5, 9, 13]],
  [h, 0x6ed9eba1, [0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15], [3, 9, 11, 15]]
]

/** The MD4 digest of the bytes: 16 bytes. */
export const md4 = (input: Uint8Array): Uint8Array => {
  // RFC 1320 §3.1–3.2: a 1 bit, zeros to 56 mod 64 bytes, then the length in bits as a 64-bit little-endian number.
  const blockCount = ((input.length + 8) >>> 6) + 1
  const words = new Uint32Array(blockCount * 16)
  for (let i = 0; i < input.length; i++) words[i >>> 2]! |= input[i]! << ((i & 3) * 8)
  words[input.length >>> 2]! |= 0x80 << ((input.length & 3) * 8)
  words[blockCount * 16 - 2] = (input.length * 8) >>> 0
  words[blockCount * 16 - 1] = Math.floor(input.length / 0x20000000)

  const state = [0x67452301, 0xefcdab89, 0x98badcfe, 0x10325476]
  for (let block = 0; block < blockCount; block++) {
    const v = state.slice()
    for (const [fn, constant, order, shifts] of rounds) {
      for (let i = 0; i < 16; i++) {
        // The register updated cycles a, d, c, b; the other three follow it in order.
        const target = (4 - (i & 3)) & 3
        const x = v[(target + 1) & 3]!
        const y = v[(target + 2) & 3]!
        const z = v[(target + 3) & 3]!
        const sum = (v[target]! + fn(x, y, z) + words[block * 16 + order[i]!]! + constant) | 0
        v[target] = rotateLeft(sum, shifts[i & 3]!)
      }
    }
    for (let i = 0; i < 4; i++) state[i] = (state[i]! + v[i]!) | 0
  }

  const digest = new Uint8Array(16)
  const view = new DataView(digest.buffer)
  for (let i = 0; i < 4; i++) view.setUint32(i * 4, state[i]! >>> 0, true)
  return digest
}
