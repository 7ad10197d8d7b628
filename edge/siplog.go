package edge

import (
	"context"
	"log/slog"
)

// quietSipgo filters sipgo's logging: it logs unparsable packets at Error
// with their raw payload (Authorization headers included), which would let
// anyone on the Internet fill the log and leak secrets into it. Payloads
// are dropped and sipgo's errors about single packets demoted to Debug.
type quietSipgo struct{ h slog.Handler }

func (q quietSipgo) Enabled(ctx context.Context, l slog.Level) bool {
	return q.h.Enabled(ctx, l)
}

func (q quietSipgo) Handle(ctx context.Context, r slog.Record) error {
	out := slog.NewRecord(r.Time, r.Level, "sipgo: "+r.Message, r.PC)
	if r.Level >= slog.LevelInfo {
		out.Level = slog.LevelDebug // per-packet noise, never operator news
	}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "data", "req", "msg", "res":
		default:
			out.AddAttrs(a)
		}
		return true
	})
	if !q.h.Enabled(ctx, out.Level) {
		return nil
	}
	return q.h.Handle(ctx, out)
}

func (q quietSipgo) WithAttrs(as []slog.Attr) slog.Handler { return quietSipgo{q.h.WithAttrs(as)} }
func (q quietSipgo) WithGroup(n string) slog.Handler       { return quietSipgo{q.h.WithGroup(n)} }
