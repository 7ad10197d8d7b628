package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// RedisConfig is where a Redis store lives: one server (Addr) or the
// master Sentinel names (SentinelMaster, asked of Sentinels).
type RedisConfig struct {
	Addr     string `toml:"addr"`     // host:port
	Password string `toml:"password"` // the server's (not the Sentinels')
	DB       int    `toml:"db"`
	// Prefix starts every key, so that several sipedge pairs can share
	// one server: <prefix>:bindings, <prefix>:bans, <prefix>:saved and
	// the channel <prefix>:changes.
	Prefix         string   `toml:"prefix"`
	SentinelMaster string   `toml:"sentinel_master"`
	Sentinels      []string `toml:"sentinels"` // host:port of each Sentinel
}

// DefaultRedisConfig has the default prefix and no server.
func DefaultRedisConfig() RedisConfig { return RedisConfig{Prefix: "sipedge", Sentinels: []string{}} }

// Validate reports what is wrong with c, for use when Redis is the store.
func (c RedisConfig) Validate() error {
	switch {
	case c.Prefix == "":
		return &ConfigError{Key: "redis.prefix", Msg: "is empty"}
	case c.DB < 0:
		return &ConfigError{Key: "redis.db", Msg: fmt.Sprintf("%d is negative", c.DB)}
	case c.SentinelMaster != "" && len(c.Sentinels) == 0:
		return &ConfigError{Key: "redis.sentinels", Msg: "sentinel_master needs the sentinels to ask"}
	case c.SentinelMaster == "" && len(c.Sentinels) > 0:
		return &ConfigError{Key: "redis.sentinel_master", Msg: "sentinels need the master's name"}
	case c.SentinelMaster != "" && c.Addr != "":
		return &ConfigError{Key: "redis.addr", Msg: "set addr or sentinel_master, not both"}
	case c.SentinelMaster == "" && c.Addr == "":
		return &ConfigError{Key: "redis.addr", Msg: "is empty (or set sentinel_master and sentinels)"}
	}
	return nil
}

// Short timeouts: with Redis away, a write or a load fails within about
// a second and the Writer keeps its changes for the next flush; the
// edge itself never waits on Redis.
const (
	redisDialTimeout = 500 * time.Millisecond
	redisIOTimeout   = time.Second
	redisOpTimeout   = 1500 * time.Millisecond // a whole Load or Write, retry included
	redisMinBackoff  = 50 * time.Millisecond   // Follow's first wait to resubscribe, doubling
	redisMaxBackoff  = time.Second             // up to this
)

// Redis is a Store on a Redis server, shared by several edges: each
// Write is one MULTI/EXEC transaction that also publishes the batch,
// and Follow passes on the batches the other edges write. Safe for
// concurrent use.
type Redis struct {
	c    *redis.Client
	name string // for String
	edge string // this edge's ID: the origin of its writes

	keyBindings, keyBans, keySaved, channel string

	pingEvery time.Duration // how often an idle subscription is pinged (tests shorten it)

	log     atomic.Pointer[slog.Logger]
	outages atomic.Int64
}

// QuietRedis sends go-redis's own log lines (every failed dial, to
// stderr) to slog.Default at debug level: Follow logs an outage once.
// go-redis's logger is process-wide, so the composition root calls this
// once, before OpenRedis.
func QuietRedis() { redis.SetLogger(redisLogger{}) }

// OpenRedis connects to the server cfg names and pings it once. An
// unreachable server is an error naming it, returned with a usable store
// (the caller may start anyway: the client reconnects by itself, the
// Writer retries, Follow resynchronises). edgeID tells this edge's
// writes from the others' in the change feed.
func OpenRedis(cfg RedisConfig, edgeID string) (*Redis, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if edgeID == "" {
		return nil, errors.New("redis store: empty edge ID")
	}
	// MaxRetries 1 still covers a pooled connection the server closed.
	// DialerRetries 1 leaves retrying to the Writer and to Follow, and a
	// short DialerRetryTimeout because go-redis sleeps it after the last
	// failed dial too. The maintenance notifications are Redis
	// Enterprise's: off, no handshake per connection.
	var c *redis.Client
	var name string
	if cfg.SentinelMaster != "" {
		c = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: cfg.SentinelMaster, SentinelAddrs: cfg.Sentinels, Password: cfg.Password, DB: cfg.DB,
			DialTimeout: redisDialTimeout, ReadTimeout: redisIOTimeout, WriteTimeout: redisIOTimeout,
			MaxRetries: 1, MaxRetryBackoff: 100 * time.Millisecond,
			DialerRetries: 1, DialerRetryTimeout: time.Millisecond,
		})
		name = fmt.Sprintf("redis-sentinel://%s@%s/%d %s", cfg.SentinelMaster, strings.Join(cfg.Sentinels, ","), cfg.DB, cfg.Prefix)
	} else {
		c = redis.NewClient(&redis.Options{
			Addr: cfg.Addr, Password: cfg.Password, DB: cfg.DB,
			DialTimeout: redisDialTimeout, ReadTimeout: redisIOTimeout, WriteTimeout: redisIOTimeout,
			MaxRetries: 1, MaxRetryBackoff: 100 * time.Millisecond,
			DialerRetries: 1, DialerRetryTimeout: time.Millisecond,
			MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
		})
		name = fmt.Sprintf("redis://%s/%d %s", cfg.Addr, cfg.DB, cfg.Prefix)
	}
	r := &Redis{c: c, name: name, edge: edgeID, pingEvery: 3 * time.Second,
		keyBindings: cfg.Prefix + ":bindings", keyBans: cfg.Prefix + ":bans",
		keySaved: cfg.Prefix + ":saved", channel: cfg.Prefix + ":changes"}
	ctx, cancel := context.WithTimeout(context.Background(), redisOpTimeout)
	defer cancel()
	if err := c.Ping(ctx).Err(); err != nil {
		return r, fmt.Errorf("state store %s: %w", name, err)
	}
	return r, nil
}

// SetLogger sets where Follow reports outages (slog.Default if unset).
func (r *Redis) SetLogger(l *slog.Logger) { r.log.Store(l) }

func (r *Redis) logger() *slog.Logger {
	if l := r.log.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// Outages is how many times Follow lost Redis (including not finding it
// at first).
func (r *Redis) Outages() int64 { return r.outages.Load() }

// String is "redis://addr/db prefix".
func (r *Redis) String() string { return r.name }

// Close closes the connections.
func (r *Redis) Close() error { return r.c.Close() }

// change is a Write as published on <prefix>:changes. Deletes are whole
// records, as a Batch's are: a key alone cannot be made a Binding.
type change struct {
	Origin  string            `json:"origin"`
	Saved   time.Time         `json:"saved"`
	Put     []json.RawMessage `json:"put,omitempty"`
	Delete  []json.RawMessage `json:"delete,omitempty"`
	Bans    []json.RawMessage `json:"bans,omitempty"`
	BansSet bool              `json:"bans_set,omitempty"`
}

// Write applies b in one MULTI/EXEC transaction. The PUBLISH is inside
// it, so a batch is announced if and only if it was applied, and the
// announcements of two edges' writes come in the order the writes did.
func (r *Redis) Write(b Batch) error {
	ch := change{Origin: r.edge, Saved: b.Saved, BansSet: b.BansSet}
	var dels []string
	var puts, bans []any // field, value, ...
	for _, d := range b.Delete {
		v, err := encodeBinding(d)
		if err != nil {
			return err
		}
		dels = append(dels, string(bindingKey(d)))
		ch.Delete = append(ch.Delete, v)
	}
	for _, p := range b.Put {
		v, err := encodeBinding(p)
		if err != nil {
			return err
		}
		puts = append(puts, string(bindingKey(p)), v)
		ch.Put = append(ch.Put, v)
	}
	for _, ban := range b.Bans {
		v, err := encodeBan(ban)
		if err != nil {
			return err
		}
		bans = append(bans, ban.Addr.String(), v)
		ch.Bans = append(ch.Bans, v)
	}
	saved, err := b.Saved.MarshalText()
	if err != nil {
		return err
	}
	msg, err := json.Marshal(ch)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), redisOpTimeout)
	defer cancel()
	_, err = r.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if len(dels) > 0 {
			p.HDel(ctx, r.keyBindings, dels...)
		}
		if len(puts) > 0 {
			p.HSet(ctx, r.keyBindings, puts...)
		}
		if b.BansSet {
			p.Del(ctx, r.keyBans)
			if len(bans) > 0 {
				p.HSet(ctx, r.keyBans, bans...)
			}
		}
		p.Set(ctx, r.keySaved, saved, 0)
		p.Publish(ctx, r.channel, msg)
		return nil
	})
	return err
}

// Load reads everything in one MULTI/EXEC, so a concurrent Write is in
// it entirely or not at all. Bindings come sorted by key.
func (r *Redis) Load() (Snapshot, error) {
	ctx, cancel := context.WithTimeout(context.Background(), redisOpTimeout)
	defer cancel()
	var saved *redis.StringCmd
	var bs, bans *redis.MapStringStringCmd
	_, err := r.c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		saved = p.Get(ctx, r.keySaved)
		bs = p.HGetAll(ctx, r.keyBindings)
		bans = p.HGetAll(ctx, r.keyBans)
		return nil
	})
	// A pipeline reports its first failed command, and a missing key (no
	// write yet) counts as one: redis.Nil.
	if err != nil && !errors.Is(err, redis.Nil) {
		return Snapshot{}, err
	}
	var snap Snapshot
	if v, err := saved.Bytes(); err == nil {
		if err := snap.Saved.UnmarshalText(v); err != nil {
			return Snapshot{}, fmt.Errorf("%s: saved time: %w", r, err)
		}
	} else if !errors.Is(err, redis.Nil) {
		return Snapshot{}, err
	}
	for _, k := range slices.Sorted(maps.Keys(bs.Val())) {
		b, err := decodeBinding([]byte(bs.Val()[k]))
		if err != nil {
			return Snapshot{}, fmt.Errorf("%s: binding %q: %w", r, k, err)
		}
		snap.Bindings = append(snap.Bindings, b)
	}
	for _, k := range slices.Sorted(maps.Keys(bans.Val())) {
		b, err := decodeBan([]byte(bans.Val()[k]))
		if err != nil {
			return Snapshot{}, fmt.Errorf("%s: ban %q: %w", r, k, err)
		}
		snap.Bans = append(snap.Bans, b)
	}
	return snap, nil
}

// Follow passes the other edges' writes to apply, one Batch each, until
// ctx ends; this edge's own are skipped. After each (re)subscription it
// first passes a Full batch from Load (this edge's writes included), so
// that what was missed while away is made up. When Redis is lost it
// resubscribes with a backoff capped at a second, logging the outage
// once and the return once. apply runs on Follow's goroutine.
func (r *Redis) Follow(ctx context.Context, apply func(Batch)) {
	var down time.Time // when the current outage began; zero while up
	wait := redisMinBackoff
	for ctx.Err() == nil {
		err := r.follow(ctx, apply, func() {
			if !down.IsZero() {
				r.logger().Info("redis is back; state resynced", "store", r.name, "down_for", time.Since(down).Round(time.Millisecond))
				down = time.Time{}
			}
			wait = redisMinBackoff
		})
		if ctx.Err() != nil {
			return
		}
		if down.IsZero() {
			down = time.Now()
			r.outages.Add(1)
			r.logger().Warn("redis lost; other edges' changes not followed until it is back", "store", r.name, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, redisMaxBackoff)
	}
}

// follow subscribes, resyncs, calls up, and passes changes on until the
// subscription breaks.
func (r *Redis) follow(ctx context.Context, apply func(Batch), up func()) error {
	ps := r.c.Subscribe(ctx, r.channel)
	defer ps.Close()
	// A blocked receive does not watch ctx; closing the PubSub ends it.
	defer context.AfterFunc(ctx, func() { ps.Close() })()
	// Subscribe keeps its error to itself: the confirmation tells.
	m, err := ps.ReceiveTimeout(ctx, redisIOTimeout)
	if err != nil {
		return err
	}
	if _, ok := m.(*redis.Subscription); !ok {
		return fmt.Errorf("%v instead of the subscription", m)
	}
	if err := r.resync(apply); err != nil {
		return err
	}
	up()
	pinged := false
	for {
		m, err := ps.ReceiveTimeout(ctx, r.pingEvery)
		if ne := net.Error(nil); errors.As(err, &ne) && ne.Timeout() {
			// Quiet for a while: a dead peer (no RST) shows only by not
			// answering a ping.
			if pinged {
				return errors.New("no answer to ping")
			}
			if err := ps.Ping(ctx); err != nil {
				return err
			}
			pinged = true
			continue
		}
		if err != nil {
			return err
		}
		pinged = false
		msg, ok := m.(*redis.Message)
		if !ok {
			continue // a pong
		}
		b, origin, err := decodeChange(msg.Payload)
		switch {
		case err != nil:
			// Something is missed: load it all instead.
			r.logger().Warn("bad change message from redis; resyncing", "store", r.name, "err", err)
			if err := r.resync(apply); err != nil {
				return err
			}
		case origin != r.edge:
			apply(b)
		}
	}
}

func (r *Redis) resync(apply func(Batch)) error {
	snap, err := r.Load()
	if err != nil {
		return err
	}
	apply(Batch{Saved: snap.Saved, Put: snap.Bindings, Bans: snap.Bans, BansSet: true, Full: true})
	return nil
}

func decodeChange(payload string) (Batch, string, error) {
	var ch change
	if err := json.Unmarshal([]byte(payload), &ch); err != nil {
		return Batch{}, "", err
	}
	b := Batch{Saved: ch.Saved, BansSet: ch.BansSet}
	var err error
	if b.Put, err = decodeAll(ch.Put, decodeBinding); err != nil {
		return Batch{}, "", fmt.Errorf("put: %w", err)
	}
	if b.Delete, err = decodeAll(ch.Delete, decodeBinding); err != nil {
		return Batch{}, "", fmt.Errorf("delete: %w", err)
	}
	if b.Bans, err = decodeAll(ch.Bans, decodeBan); err != nil {
		return Batch{}, "", fmt.Errorf("bans: %w", err)
	}
	return b, ch.Origin, nil
}

func decodeAll[T any](raw []json.RawMessage, decode func([]byte) (T, error)) ([]T, error) {
	var out []T
	for _, v := range raw {
		x, err := decode(v)
		if err != nil {
			return nil, err
		}
		out = append(out, x)
	}
	return out, nil
}

// redisLogger sends go-redis's own log lines to slog's default logger at
// debug level.
type redisLogger struct{}

func (redisLogger) Printf(ctx context.Context, format string, v ...any) {
	slog.Default().DebugContext(ctx, "go-redis: "+fmt.Sprintf(format, v...))
}

var _ Store = (*Redis)(nil)
