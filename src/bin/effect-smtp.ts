#!/usr/bin/env node
/**
 * The `effect-smtp` command: the command line of `internal/cli.ts`, run on Node with its transport and platform.
 */
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Cli from "../internal/cli.js"
import * as SmtpTransport from "../SmtpTransport.js"

Cli.main(process.argv).pipe(
  Effect.provide(Layer.merge(NodeContext.layer, SmtpTransport.layerNode)),
  NodeRuntime.runMain({
    // `main` reports its own errors, one line each, and returns the exit code; only a signal or a bug ends otherwise.
    disableErrorReporting: true,
    disablePrettyLogger: true,
    teardown: (exit, onExit) => onExit(Cli.exitCodeOfExit(exit))
  })
)
