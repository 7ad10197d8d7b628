package edge_test

import (
	"log/slog"
	"testing"

	"github.com/emiago/sipgo/sip"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	sip.SetDefaultLogger(slog.New(slog.DiscardHandler))
	sip.UDPMTUSize = 65535 // as cmd/sipedge sets it once for the process
	goleak.VerifyTestMain(m)
}
