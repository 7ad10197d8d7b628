package state

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sipedge/sipedge/edge/clock"
	"github.com/sipedge/sipedge/edge/registry"
	"github.com/sipedge/sipedge/nat"
	"github.com/sipedge/sipedge/ratelimit"
)

// testRedis is a redis-server of the test's own, on a free port, with
// no persistence. stop kills it; start runs a new one on the same port.
type testRedis struct {
	t    testing.TB
	bin  string
	addr string
	dir  string
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
}

func newTestRedis(t testing.TB) *testRedis {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("redis-server is needed in CI:", err)
		}
		t.Skip("no redis-server:", err)
	}
	s := &testRedis{t: t, bin: bin, addr: freeAddr(t), dir: t.TempDir()}
	s.start()
	t.Cleanup(s.stop)
	return s
}

// freeAddr is a loopback address no one listens on (for now).
func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func (s *testRedis) start() {
	s.t.Helper()
	_, port, _ := net.SplitHostPort(s.addr)
	log := filepath.Join(s.dir, "redis.log")
	s.cmd = exec.Command(s.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", s.dir, "--logfile", log)
	if err := s.cmd.Start(); err != nil {
		s.t.Fatal(err)
	}
	s.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(s.cmd, s.done)
	deadline := time.Now().Add(10 * time.Second)
	for !s.ping() {
		select {
		case <-s.done:
			b, _ := os.ReadFile(log)
			s.t.Fatalf("redis-server exited:\n%s", b)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.stop()
			b, _ := os.ReadFile(log)
			s.t.Fatalf("redis-server on %s does not answer PING:\n%s", s.addr, b)
		}
	}
}

func (s *testRedis) ping() bool {
	c, err := net.DialTimeout("tcp", s.addr, 100*time.Millisecond)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(time.Second))
	if _, err := io.WriteString(c, "PING\r\n"); err != nil {
		return false
	}
	line, _ := bufio.NewReader(c).ReadString('\n')
	return line == "+PONG\r\n"
}

func (s *testRedis) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.done
	s.cmd = nil
}

func openRedis(t testing.TB, addr, edge string) *Redis {
	t.Helper()
	r, err := OpenRedis(RedisConfig{Addr: addr, Prefix: "test"}, edge)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

// follow runs r.Follow until the test ends, its batches on the channel.
func follow(t *testing.T, r *Redis) <-chan Batch {
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan Batch, 100)
	done := make(chan struct{})
	go func() { r.Follow(ctx, func(b Batch) { ch <- b }); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return ch
}

func next(t *testing.T, ch <-chan Batch) Batch {
	t.Helper()
	select {
	case b := <-ch:
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("no batch from Follow")
		return Batch{}
	}
}

func TestRedisRoundTrip(t *testing.T) {
	srv := newTestRedis(t)
	s := openRedis(t, srv.addr, "a")
	if want := "redis://" + srv.addr + "/0 test"; s.String() != want {
		t.Errorf("String() = %q, want %q", s, want)
	}
	if snap, err := s.Load(); err != nil || !snap.Saved.IsZero() || len(snap.Bindings) != 0 || len(snap.Bans) != 0 {
		t.Fatalf("empty server loads %+v, %v", snap, err)
	}
	ban := ratelimit.Ban{Addr: netip.MustParsePrefix("203.0.113.9/32"), Reason: ratelimit.ReasonFlood, Since: t0,
		Until: t0.Add(time.Hour), Count: 2, Events: 50, Window: 3 * time.Second, Over: ratelimit.ReasonPacketRate}
	b1, b2 := binding(1, nat.UDP), binding(2, nat.UDP)
	if err := s.Write(Batch{Saved: t0, Put: []registry.Binding{b1, b2}, Bans: []ratelimit.Ban{ban}, BansSet: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(Batch{Saved: t0.Add(time.Second), Delete: []registry.Binding{b1}}); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Saved.Equal(t0.Add(time.Second)) {
		t.Errorf("saved %v, want %v", snap.Saved, t0.Add(time.Second))
	}
	if len(snap.Bindings) != 1 || fmt.Sprint(snap.Bindings[0]) != fmt.Sprint(b2) {
		t.Errorf("bindings:\n%+v\nwant\n%+v", snap.Bindings, b2)
	}
	if len(snap.Bans) != 1 || fmt.Sprint(snap.Bans[0]) != fmt.Sprint(ban) {
		t.Errorf("bans:\n%+v\nwant\n%+v", snap.Bans, ban)
	}
	// The ban list is replaced as a whole.
	if err := s.Write(Batch{Saved: t0, BansSet: true}); err != nil {
		t.Fatal(err)
	}
	if snap, _ := s.Load(); len(snap.Bans) != 0 || len(snap.Bindings) != 1 {
		t.Errorf("after an empty ban set: bans %v, %d bindings", snap.Bans, len(snap.Bindings))
	}
	// A record that does not decode is an error naming it.
	s.c.HSet(context.Background(), "test:bindings", "bad\x00key", "{not json")
	if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), `"bad\x00key"`) {
		t.Errorf("bad record: %v", err)
	}
}

// A write by one edge reaches the other's Follow, not its own.
func TestRedisFollowOtherEdge(t *testing.T) {
	srv := newTestRedis(t)
	a, b := openRedis(t, srv.addr, "edge-a"), openRedis(t, srv.addr, "edge-b")
	a.pingEvery, b.pingEvery = 20*time.Millisecond, 20*time.Millisecond
	early := binding(9, nat.UDP)
	if err := a.Write(Batch{Saved: t0, Put: []registry.Binding{early}}); err != nil {
		t.Fatal(err)
	}
	fa, fb := follow(t, a), follow(t, b)
	for name, ch := range map[string]<-chan Batch{"a": fa, "b": fb} {
		if full := next(t, ch); !full.Full || len(full.Put) != 1 || fmt.Sprint(full.Put[0]) != fmt.Sprint(early) || !full.BansSet {
			t.Fatalf("%s's first batch %+v, want a full one with binding 9", name, full)
		}
	}

	b1 := binding(1, nat.UDP)
	ban := ratelimit.Ban{Addr: netip.MustParsePrefix("203.0.113.0/24"), Reason: ratelimit.ReasonFlood, Since: t0, Until: t0.Add(time.Hour)}
	if err := a.Write(Batch{Saved: t0, Put: []registry.Binding{b1}, Delete: []registry.Binding{early},
		Bans: []ratelimit.Ban{ban}, BansSet: true}); err != nil {
		t.Fatal(err)
	}
	got := next(t, fb)
	if got.Full || !got.Saved.Equal(t0) || len(got.Put) != 1 || fmt.Sprint(got.Put[0]) != fmt.Sprint(b1) ||
		len(got.Delete) != 1 || fmt.Sprint(got.Delete[0]) != fmt.Sprint(early) ||
		!got.BansSet || len(got.Bans) != 1 || fmt.Sprint(got.Bans[0]) != fmt.Sprint(ban) {
		t.Fatalf("b got %+v", got)
	}

	// Idle subscriptions are pinged, answered, and kept.
	<-time.After(300 * time.Millisecond)
	if a.Outages()+b.Outages() != 0 {
		t.Errorf("outages while idle: a %d, b %d", a.Outages(), b.Outages())
	}

	// Changes come in order on one channel: had a seen its own write, it
	// would come before b's.
	b2 := binding(2, nat.UDP)
	if err := b.Write(Batch{Saved: t0.Add(time.Second), Put: []registry.Binding{b2}}); err != nil {
		t.Fatal(err)
	}
	if got := next(t, fa); len(got.Put) != 1 || got.Put[0].AOR != b2.AOR || got.BansSet {
		t.Fatalf("a's next batch %+v, want only b's write", got)
	}
}

// syncBuffer is a bytes.Buffer for a logger on another goroutine.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// With Redis gone, writes fail fast; when it is back (a new, empty
// server), Follow resubscribes and resyncs; the outage is logged once.
func TestRedisOutage(t *testing.T) {
	srv := newTestRedis(t)
	s := openRedis(t, srv.addr, "a")
	var log syncBuffer
	s.SetLogger(slog.New(slog.NewTextHandler(&log, nil)))
	if err := s.Write(Batch{Saved: t0, Put: []registry.Binding{binding(1, nat.UDP)}}); err != nil {
		t.Fatal(err)
	}
	f := follow(t, s)
	if full := next(t, f); !full.Full || len(full.Put) != 1 {
		t.Fatalf("first batch %+v", full)
	}

	srv.stop()
	start := time.Now()
	if err := s.Write(Batch{Saved: t0, Put: []registry.Binding{binding(2, nat.UDP)}}); err == nil {
		t.Fatal("write with redis down succeeded")
	} else if d := time.Since(start); d > 2*time.Second {
		t.Errorf("failed write took %v", d)
	} else {
		t.Logf("write with redis down: %v after %v", err, d)
	}
	if _, err := s.Load(); err == nil {
		t.Error("load with redis down succeeded")
	}

	srv.start()
	full := next(t, f)
	if !full.Full || len(full.Put) != 0 || !full.BansSet {
		t.Fatalf("batch after the restart %+v, want a full, empty one", full)
	}
	if err := s.Write(Batch{Saved: t0, Put: []registry.Binding{binding(3, nat.UDP)}}); err != nil {
		t.Fatalf("write after the restart: %v", err)
	}
	if n := s.Outages(); n != 1 {
		t.Errorf("%d outages, want 1", n)
	}
	// The return is logged once the resync was applied: just after.
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(log.String(), "redis is back") && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	l := log.String()
	t.Log(l)
	if strings.Count(l, "redis lost") != 1 || strings.Count(l, "redis is back") != 1 {
		t.Errorf("outage log, want one loss and one return:\n%s", l)
	}
}

// A server that stops answering without closing its connections (a
// frozen host) is found by the pings; once it answers again, Follow
// resubscribes and resyncs.
func TestRedisSilentServer(t *testing.T) {
	srv := newTestRedis(t)
	s := openRedis(t, srv.addr, "a")
	s.pingEvery = 100 * time.Millisecond
	s.SetLogger(slog.New(slog.DiscardHandler))
	f := follow(t, s)
	if full := next(t, f); !full.Full {
		t.Fatalf("first batch %+v", full)
	}
	if err := srv.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := s.Write(Batch{Saved: t0}); err == nil {
		t.Fatal("write to a frozen server succeeded")
	} else if d := time.Since(start); d > 2*time.Second {
		t.Errorf("failed write took %v", d)
	} else {
		t.Logf("write to a frozen server: %v after %v", err, d)
	}
	for deadline := time.Now().Add(10 * time.Second); s.Outages() == 0; {
		if time.Now().After(deadline) {
			t.Fatal("frozen server not noticed")
		}
		select {
		case b := <-f:
			t.Fatalf("batch %+v from a frozen server", b)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := srv.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	if full := next(t, f); !full.Full {
		t.Fatalf("batch after the thaw %+v, want a full one", full)
	}
}

func TestOpenRedisUnreachable(t *testing.T) {
	addr := freeAddr(t)
	start := time.Now()
	r, err := OpenRedis(RedisConfig{Addr: addr, Prefix: "test"}, "a")
	if r != nil {
		defer r.Close()
	}
	if err == nil || !strings.Contains(err.Error(), addr) {
		t.Fatalf("open on a closed port: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("failing open took %v", d)
	}
}

func TestRedisConfigValidate(t *testing.T) {
	for _, c := range []struct {
		cfg RedisConfig
		key string // "" for valid
	}{
		{RedisConfig{Addr: "r:6379", Prefix: "p"}, ""},
		{RedisConfig{SentinelMaster: "m", Sentinels: []string{"s:26379"}, Prefix: "p"}, ""},
		{RedisConfig{Addr: "r:6379"}, "redis.prefix"},
		{RedisConfig{Prefix: "p"}, "redis.addr"},
		{RedisConfig{SentinelMaster: "m", Prefix: "p"}, "redis.sentinels"},
		{RedisConfig{Sentinels: []string{"s:26379"}, Prefix: "p"}, "redis.sentinel_master"},
		{RedisConfig{Addr: "r:6379", Prefix: "p", DB: -1}, "redis.db"},
	} {
		err := c.cfg.Validate()
		if ce, ok := err.(*ConfigError); c.key == "" && err != nil || c.key != "" && (!ok || ce.Key != c.key) {
			t.Errorf("%+v: %v, want key %q", c.cfg, err, c.key)
		}
	}
	if DefaultRedisConfig().Prefix != "sipedge" {
		t.Error("default prefix")
	}
}

// The Writer works over Redis as over any Store.
func TestWriterOverRedis(t *testing.T) {
	srv := newTestRedis(t)
	s := openRedis(t, srv.addr, "a")
	w := NewWriter(s, time.Second, clock.NewFake(t0), slog.New(slog.DiscardHandler), nil)
	b := binding(1, nat.UDP)
	w.Observe(registry.Event{Kind: registry.Registered, Binding: b})
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	snap, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.Bindings) != 1 || fmt.Sprint(snap.Bindings[0]) != fmt.Sprint(b) || !snap.Saved.Equal(t0) {
		t.Fatalf("loaded %+v", snap)
	}
}
