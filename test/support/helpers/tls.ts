import * as Effect from "effect/Effect"
import { execFileSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { run } from "../daemons/processes.js"

/** A self-signed certificate and its key, in PEM. */
export interface SelfSigned {
  readonly cert: string
  readonly key: string
}

const cache = new Map<string, SelfSigned>()

/**
 * Makes a self-signed certificate with `openssl` (cached per name): for `localhost` and 127.0.0.1 unless other names
 * are given, valid for two days, or expired from the start when `expired` is set.
 */
export const selfSigned = (
  options: { readonly commonName?: string; readonly altNames?: string; readonly expired?: boolean } = {}
): SelfSigned => {
  const commonName = options.commonName ?? "localhost"
  const altNames = options.altNames ?? "DNS:localhost,IP:127.0.0.1"
  const key = `${commonName}|${altNames}|${options.expired === true}`
  const cached = cache.get(key)
  if (cached !== undefined) return cached
  const dir = mkdtempSync(join(tmpdir(), "effect-smtp-cert-"))
  try {
    const keyFile = join(dir, "key.pem")
    const certFile = join(dir, "cert.pem")
    if (options.expired === true) {
      // Valid until one day before it became valid: expired from the start (openssl 3.0 has no -not_after).
      const csr = join(dir, "cert.csr")
      const ext = join(dir, "ext.cnf")
      writeFileSync(ext, `subjectAltName=${altNames}\n`)
      execFileSync("openssl", [
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        `/CN=${commonName}`,
        "-keyout",
        keyFile,
        "-out",
        csr
      ], { stdio: "ignore" })
      execFileSync("openssl", [
        "x509",
        "-req",
        "-in",
        csr,
        "-signkey",
        keyFile,
        "-days",
        "-1",
        "-extfile",
        ext,
        "-out",
        certFile
      ], { stdio: "ignore" })
    } else {
      execFileSync("openssl", [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        `/CN=${commonName}`,
        "-addext",
        `subjectAltName=${altNames}`,
        "-days",
        "2",
        "-keyout",
        keyFile,
        "-out",
        certFile
      ], { stdio: "ignore" })
    }
    const made = { cert: readFileSync(certFile, "utf8"), key: readFileSync(keyFile, "utf8") }
    cache.set(key, made)
    return made
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
}

/**
 * Makes a fresh self-signed certificate for a real server (EC P-256, CN and SAN `localhost`, SAN IP 127.0.0.1, valid
 * for seven days) into `directory`, as `cert.pem` and `key.pem`, where the server reads them; succeeds with the
 * certificate's PEM.
 */
export const serverCertificate = (directory: string): Effect.Effect<string, Error> =>
  run(
    "openssl",
    [
      ..."req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 -subj /CN=localhost".split(" "),
      ..."-keyout key.pem -out cert.pem -addext subjectAltName=DNS:localhost,IP:127.0.0.1".split(" ")
    ],
    directory
  ).pipe(Effect.map(() => readFileSync(join(directory, "cert.pem"), "utf8")))
