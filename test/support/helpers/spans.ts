/**
 * A tracer that records every span it makes, for tests that check spans: Effect's own tracer underneath.
 */
import * as Effect from "effect/Effect"
import * as Tracer from "effect/Tracer"

/** The tracer to give `Effect.withTracer`, and the spans it made so far, in the order they began. */
export const recordingTracer: Effect.Effect<{ readonly tracer: Tracer.Tracer; readonly spans: Array<Tracer.Span> }> =
  Effect.map(Effect.tracer, (native) => {
    const spans: Array<Tracer.Span> = []
    const tracer = Tracer.make({
      span: (name, parent, context, links, startTime, kind, options) => {
        const span = native.span(name, parent, context, links, startTime, kind, options)
        spans.push(span)
        return span
      },
      context: (f, fiber) => native.context(f, fiber)
    })
    return { tracer, spans }
  })
