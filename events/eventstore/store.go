package eventstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/identityd/identityd/events"
)

// MinServerVersion is the oldest NATS server identityd runs on: 2.12 brought atomic batch
// publish, which sign-up and account deletion rely on.
const MinServerVersion = "2.12.0"

// Config configures a Store. Zero values take defaults.
type Config struct {
	// Conn is the NATS connection to use (required).
	Conn *nats.Conn
	// Stream is the stream name (default events.StreamName).
	Stream string
	// Replicas is the stream's replication factor. 0 keeps an existing stream's and creates a
	// new one with 1, so a tool that opens the store to read never downgrades a replicated
	// stream.
	Replicas int
	// Duplicates is the Nats-Msg-Id deduplication window (default 2 minutes).
	Duplicates time.Duration
	// Timeout bounds one append or load (default 5s).
	Timeout time.Duration
	// ReadOnly opens an existing stream without creating or updating it, for readers whose
	// NATS credentials may not change streams (identityctl, subscribers); Append then fails
	// with ErrReadOnly.
	ReadOnly bool
	// Keys are the public keys whose events reads accept (required): an event they do not
	// verify is returned as a stub with Refusal set (events.Keyring.Decode).
	Keys *events.Keyring
	// Signer signs appended events (required unless ReadOnly).
	Signer events.SigningKey
}

// ErrReadOnly means an append on a store opened with Config.ReadOnly.
var ErrReadOnly = errors.New("eventstore: opened read-only")

func (c *Config) fill() {
	if c.Stream == "" {
		c.Stream = events.StreamName
	}
	if c.Duplicates <= 0 {
		c.Duplicates = 2 * time.Minute
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
}

// Validate reports a configuration that cannot work.
func (c Config) Validate() error {
	if c.Conn == nil {
		return errors.New("eventstore: Conn is required")
	}
	if c.Keys == nil {
		return errors.New("eventstore: Keys is required (the public keys events are verified with)")
	}
	if !c.ReadOnly && !c.Signer.Valid() {
		return errors.New("eventstore: Signer is required unless ReadOnly")
	}
	if c.Replicas < 0 || c.Replicas > 5 {
		return errors.New("eventstore: Replicas must be from 0 (keep the stream's) to 5")
	}
	return nil
}

// Store is the JetStream event store. It implements domain.EventStore.
type Store struct {
	cfg Config
	nc  *nats.Conn
	js  jetstream.JetStream

	metadata map[string]string // the signed record of where signing began (events.SigningKey.SignedFrom)

	mu         sync.Mutex
	conn       context.Context // done when the connection in use was lost
	connCancel context.CancelFunc
}

// ConnectionLost tells the store that its NATS connection dropped (call it from the
// connection's disconnect handler): appends waiting for an acknowledgement give up at once
// with ErrUnavailable instead of at their timeout. Their outcome is unknown — the event may
// have been stored — which is what idempotency keys and the stream's deduplication are for.
func (s *Store) ConnectionLost() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.connCancel()
	s.conn, s.connCancel = context.WithCancel(context.Background())
}

// withConnection bounds ctx by the append timeout and by the current connection.
func (s *Store) withConnection(ctx context.Context) (context.Context, context.CancelFunc) {
	s.mu.Lock()
	conn := s.conn
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	stop := context.AfterFunc(conn, cancel)
	return ctx, func() { stop(); cancel() }
}

// Open checks the server version and creates or updates the stream; read-only, it looks the
// stream up and fails if it does not exist.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	cfg.fill()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := CheckServerVersion(cfg.Conn); err != nil {
		return nil, err
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, err
	}
	s := &Store{cfg: cfg, nc: cfg.Conn, js: js}
	s.conn, s.connCancel = context.WithCancel(context.Background())
	existing, err := js.Stream(ctx, cfg.Stream)
	notFound := errors.Is(err, jetstream.ErrStreamNotFound)
	if err != nil && !notFound {
		return nil, fmt.Errorf("eventstore: look up stream %s: %w", cfg.Stream, err)
	}
	if cfg.ReadOnly {
		if notFound {
			return nil, fmt.Errorf("eventstore: stream %s not found (identityd creates it on its first start): %w", cfg.Stream, err)
		}
		info := existing.CachedInfo()
		s.cfg.Replicas = info.Config.Replicas
		if from, ok := cfg.Keys.SignedFrom(cfg.Stream, info.Config.Metadata); ok {
			s.cfg.Keys = cfg.Keys.WithUnsignedThrough(from - 1)
		}
		return s, nil
	}
	if s.cfg.Replicas == 0 {
		s.cfg.Replicas = 1
		if !notFound {
			s.cfg.Replicas = existing.CachedInfo().Config.Replicas
		}
	}
	from := uint64(1) // a new stream: every event is signed
	if !notFound {
		if from, err = s.signedFrom(ctx, existing.CachedInfo()); err != nil {
			return nil, err
		}
	}
	s.cfg.Keys = cfg.Keys.WithUnsignedThrough(from - 1)
	s.metadata = cfg.Signer.SignedFrom(cfg.Stream, from)
	if _, err := js.CreateOrUpdateStream(ctx, s.StreamConfig()); err != nil {
		return nil, fmt.Errorf("eventstore: create stream %s: %w", cfg.Stream, err)
	}
	return s, nil
}

// ErrUnsignedHistory is returned by Open for a stream that begins with unsigned events and
// records no position from which its events are signed.
var ErrUnsignedHistory = errors.New("the event stream begins with unsigned events")

// signedFrom is the position from which every event of an existing stream is signed: the one
// its metadata records under a trusted signature, else (a stream written before identityd
// signed, or whose record was removed) the first position if the stream is empty or begins
// with a signed event, else the one after the configured unsigned history.
func (s *Store) signedFrom(ctx context.Context, info *jetstream.StreamInfo) (uint64, error) {
	if from, ok := s.cfg.Keys.SignedFrom(s.cfg.Stream, info.Config.Metadata); ok {
		return from, nil
	}
	if info.State.Msgs == 0 {
		return info.State.LastSeq + 1, nil
	}
	first := info.State.FirstSeq
	signed := false
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	err := DirectRead(ctx, s.nc, s.cfg.Stream, events.SubjectRoot+".>", first, 1, 1, func(m *nats.Msg, _ uint64) error {
		signed = m.Header.Get(events.HeaderSignature) != ""
		return nil
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("eventstore: read the first event: %w", err)
	case signed:
		return first, nil
	case s.cfg.Keys.UnsignedThrough() > 0:
		return s.cfg.Keys.UnsignedThrough() + 1, nil
	}
	return 0, fmt.Errorf("%w (seq %d) and records no position from which its events are signed: if identityd wrote "+
		"them before it signed events, set IDENTITYD_EVENTS_UNSIGNED_THROUGH to the last sequence that version wrote, "+
		"checked with identityctl events export (README, Security model); identityd records it in the stream and the "+
		"setting is not needed afterwards", ErrUnsignedHistory, first)
}

// StreamConfig is the stream's configuration: file storage, kept forever, deletes and purges
// denied (the log is append-only), direct gets for loading aggregates, atomic batches.
func (s *Store) StreamConfig() jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               s.cfg.Stream,
		Description:        "identityd events: the source of truth for every identity",
		Subjects:           []string{events.SubjectRoot + ".>"},
		Storage:            jetstream.FileStorage,
		Retention:          jetstream.LimitsPolicy,
		Replicas:           s.cfg.Replicas,
		Duplicates:         s.cfg.Duplicates,
		DenyDelete:         true,
		DenyPurge:          true,
		AllowDirect:        true,
		AllowAtomicPublish: true,
		Discard:            jetstream.DiscardNew,
		Metadata:           s.metadata,
	}
}

// Conn is the NATS connection the store uses.
func (s *Store) Conn() *nats.Conn { return s.nc }

// JetStream is the JetStream context the store uses, for consumers of the same stream.
func (s *Store) JetStream() jetstream.JetStream { return s.js }

// StreamName is the stream's name.
func (s *Store) StreamName() string { return s.cfg.Stream }

// CheckServerVersion refuses a server older than MinServerVersion with a clear message.
func CheckServerVersion(nc *nats.Conn) error {
	v := nc.ConnectedServerVersion()
	if !versionAtLeast(v, MinServerVersion) {
		return fmt.Errorf("NATS server %s at %s is too old: identityd needs nats-server %s or newer "+
			"(atomic batch publish, expected-last-subject-sequence on wildcard subjects); "+
			"upgrade the server or leave IDENTITYD_NATS_URL unset to use the embedded one",
			v, nc.ConnectedUrlRedacted(), MinServerVersion)
	}
	if !nc.HeadersSupported() {
		return errors.New("NATS server does not support headers")
	}
	return nil
}

func versionAtLeast(have, want string) bool {
	parse := func(v string) [3]int {
		var out [3]int
		v = strings.TrimPrefix(v, "v")
		if i := strings.IndexAny(v, "-+"); i >= 0 {
			v = v[:i]
		}
		for i, p := range strings.SplitN(v, ".", 3) {
			out[i], _ = strconv.Atoi(p)
		}
		return out
	}
	h, w := parse(have), parse(want)
	for i := range h {
		if h[i] != w[i] {
			return h[i] > w[i]
		}
	}
	return true
}

// Append implements domain.EventStore. One change is a plain publish; several are one atomic
// batch. Each expectation is checked on the first message of its aggregate.
func (s *Store) Append(ctx context.Context, meta events.Metadata, expect []events.Expectation, changes []events.Change) (uint64, error) {
	if len(changes) == 0 {
		return 0, errors.New("eventstore: nothing to append")
	}
	if s.cfg.ReadOnly {
		return 0, ErrReadOnly
	}
	if s.nc.Status() != nats.CONNECTED {
		return 0, fmt.Errorf("%w: not connected to NATS (%s)", events.ErrUnavailable, s.nc.Status())
	}
	msgs := make([]*nats.Msg, len(changes))
	chains := map[events.Aggregate]string{} // each aggregate's chain head as the batch grows
	for i := range changes {
		c := &changes[i]
		agg := c.Event.Aggregate()
		prev, seen := chains[agg]
		var exp *events.Expectation
		if !seen {
			for j := range expect {
				if expect[j].Aggregate == agg {
					exp = &expect[j]
					prev = exp.Chain
				}
			}
		}
		m, chain, err := events.Encode(s.cfg.Signer, c.ID.String(), c.At, meta, prev, c.Event)
		if err != nil {
			return 0, err
		}
		c.Chain, chains[agg] = chain, chain
		m.Header.Set(jetstream.MsgIDHeader, c.ID.String())
		if exp != nil {
			m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(exp.Version, 10))
			m.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, agg.Filter())
		}
		msgs[i] = m
	}
	ctx, cancel := s.withConnection(ctx)
	defer cancel()
	if len(msgs) == 1 {
		ack, err := s.js.PublishMsg(ctx, msgs[0])
		if err != nil {
			return 0, classify(err)
		}
		if ack.Duplicate {
			// The message was stored by an earlier attempt. A clustered stream checks the
			// duplicate before the expectation, so this says nothing about whether the caller's
			// view of the aggregate is current: let it decide again on fresh state.
			return 0, fmt.Errorf("%w: event %s was stored before (a retried append)", events.ErrVersionConflict,
				msgs[0].Header.Get(jetstream.MsgIDHeader))
		}
		return ack.Sequence, nil
	}
	return s.publishBatch(ctx, msgs)
}

// pubAck is the server's answer to a batch commit.
type pubAck struct {
	Stream    string `json:"stream"`
	Sequence  uint64 `json:"seq"`
	BatchID   string `json:"batch"`
	BatchSize int    `json:"count"`
	Error     *struct {
		Code        int    `json:"code"`
		ErrCode     int    `json:"err_code"`
		Description string `json:"description"`
	} `json:"error"`
}

// publishBatch sends an atomic batch: every message carries the batch id and its position, the
// last one commits. The server stores all or none.
func (s *Store) publishBatch(ctx context.Context, msgs []*nats.Msg) (uint64, error) {
	batchID := msgs[0].Header.Get(jetstream.MsgIDHeader)
	for i, m := range msgs {
		m.Header.Set("Nats-Batch-Id", batchID)
		m.Header.Set("Nats-Batch-Sequence", strconv.Itoa(i+1))
		last := i == len(msgs)-1
		if last {
			m.Header.Set("Nats-Batch-Commit", "1")
		}
		reply, err := s.nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			return 0, classify(err)
		}
		if !last && len(reply.Data) == 0 {
			continue // flow-control ack of a message inside the batch
		}
		var ack pubAck
		if err := json.Unmarshal(reply.Data, &ack); err != nil {
			return 0, fmt.Errorf("eventstore: batch reply: %w", err)
		}
		if ack.Error != nil {
			return 0, apiError(ack.Error.ErrCode, ack.Error.Description)
		}
		if !last {
			return 0, errors.New("eventstore: batch acknowledged before commit")
		}
		return ack.Sequence, nil
	}
	return 0, errors.New("eventstore: empty batch")
}

// JetStream API error codes that mean "the aggregate moved on".
const (
	errWrongLastSequence          = 10071
	errWrongLastSequenceConstant  = 10164
	errBatchContainsDuplicateMsg  = 10201
	errStreamDuplicateMsgConflict = 10158
)

func apiError(code int, desc string) error {
	switch code {
	case errWrongLastSequence, errWrongLastSequenceConstant, errBatchContainsDuplicateMsg, errStreamDuplicateMsgConflict:
		return fmt.Errorf("%w: %s", events.ErrVersionConflict, desc)
	}
	return fmt.Errorf("eventstore: jetstream error %d: %s", code, desc)
}

func classify(err error) error {
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		return apiError(int(apiErr.ErrorCode), apiErr.Description)
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, nats.ErrDisconnected) ||
		errors.Is(err, nats.ErrConnectionReconnecting) {
		return fmt.Errorf("%w: %w", events.ErrUnavailable, err)
	}
	return err
}

// directGetRequest is a batched direct get of the messages matching a subject filter.
type directGetRequest struct {
	Seq     uint64 `json:"seq"`
	NextFor string `json:"next_by_subj,omitempty"`
	Batch   int    `json:"batch"`
}

const loadBatch = 256

// Load implements domain.EventStore with batched direct gets (no consumer is created).
func (s *Store) Load(ctx context.Context, agg events.Aggregate, after uint64) ([]events.Envelope, error) {
	return s.Read(ctx, agg.Filter(), after+1, 0)
}

// Read returns the events matching a subject filter from stream sequence `from` on, at most
// `limit` of them (0: all). An event whose signature does not verify comes as a stub with
// Refusal set; one that cannot be decoded ends the read with an error.
func (s *Store) Read(ctx context.Context, filter string, from uint64, limit int) ([]events.Envelope, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	var out []events.Envelope
	err := DirectRead(ctx, s.nc, s.cfg.Stream, filter, from, loadBatch, limit, func(m *nats.Msg, seq uint64) error {
		env, err := s.decode(m.Header.Get(jetstream.SubjectHeader), m.Header, m.Data, seq)
		if err != nil {
			return err
		}
		out = append(out, env)
		return nil
	})
	return out, err
}

// Keys is the keyring reads verify events with.
func (s *Store) Keys() *events.Keyring { return s.cfg.Keys }

// decode verifies and decodes one stored message; a refused event becomes its stub.
func (s *Store) decode(subject string, h nats.Header, data []byte, seq uint64) (events.Envelope, error) {
	env, err := s.cfg.Keys.Decode(subject, h, data, seq)
	if err != nil && !events.IsRefused(err) {
		return env, err
	}
	return env, nil
}

// DirectRead hands each message matching filter from stream sequence `from` on to each, in
// order, at most limit of them (0: all), with batched direct gets of `batch` messages: no
// consumer is created and any current replica may answer. It stops at the first error each
// returns. Loads, the projection feed's bridge and a rebuild's catch-up read this way; reads
// of the whole stream use Replay.
func DirectRead(ctx context.Context, nc *nats.Conn, stream, filter string, from uint64, batch, limit int, each func(m *nats.Msg, seq uint64) error) error {
	if nc.Status() != nats.CONNECTED {
		return fmt.Errorf("%w: not connected to NATS (%s)", events.ErrUnavailable, nc.Status())
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return classify(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if filter == events.SubjectRoot+".>" {
		filter = "" // the whole stream: the server's unfiltered path skips a costly subject match
	}
	read, seq := 0, from
	for {
		n := batch
		if limit > 0 && limit-read < n {
			n = limit - read
		}
		req, _ := json.Marshal(directGetRequest{Seq: seq, NextFor: filter, Batch: n})
		if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
			return classify(err)
		}
		more := false
	recv:
		for {
			m, err := sub.NextMsgWithContext(ctx)
			if err != nil {
				return classify(err)
			}
			switch m.Header.Get("Status") {
			case "":
			case "404": // nothing (more) matches
				return nil
			case "204": // end of batch
				pending, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
				more = pending > 0 && (limit == 0 || read < limit)
				break recv
			default:
				return fmt.Errorf("%w: direct get: %s %s", events.ErrUnavailable, m.Header.Get("Status"), m.Header.Get("Description"))
			}
			n, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
			if err != nil {
				return fmt.Errorf("eventstore: direct get without sequence: %w", err)
			}
			if err := each(m, n); err != nil {
				return err
			}
			read++
			seq = n + 1
		}
		if !more {
			return nil
		}
	}
}

// Version implements domain.EventStore. It asks the stream leader (the non-direct message API)
// rather than any replica: direct gets may be answered by a follower that lags.
func (s *Store) Version(ctx context.Context, agg events.Aggregate) (uint64, error) {
	return s.lastFor(ctx, agg.Filter())
}

// LastSequence is the stream's last sequence as its leader knows it: every append acknowledged
// so far is at or below it, so it is where a reader that wants everything stored so far must
// get to (rebuilds, verification) and what the credential cache's lease checks its read model
// against. It asks the stream leader for stream info in one request (never a replica that
// lags, as a direct get could be); the server answers from counters it keeps, in constant
// time. (A last-message lookup on the stream's whole subject space, identity.>, costs time in
// proportion to the number of subjects; README, "Performance".)
func (s *Store) LastSequence(ctx context.Context) (uint64, error) {
	m, err := s.apiRequest(ctx, "STREAM.INFO", nil)
	if err != nil {
		return 0, err
	}
	var resp struct {
		State *struct {
			LastSeq uint64 `json:"last_seq"`
		} `json:"state"`
		Cluster *ClusterInfo `json:"cluster"`
		Error   *struct {
			Desc string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, fmt.Errorf("eventstore: stream info reply: %w", err)
	}
	switch {
	case resp.Error != nil:
		return 0, fmt.Errorf("%w: stream info: %s", events.ErrUnavailable, resp.Error.Desc)
	case resp.State == nil:
		return 0, errors.New("eventstore: stream info reply without a state")
	case !resp.Cluster.FromLeader():
		return 0, fmt.Errorf("%w: stream info from a replica while the stream has no leader", events.ErrUnavailable)
	}
	return resp.State.LastSeq, nil
}

// ClusterInfo is the cluster part of a JetStream stream info reply, for readers that ask the
// stream's leader (LastSequence here, the credential cache's instance registry).
type ClusterInfo struct {
	Leader string `json:"leader"`
}

// FromLeader reports whether a stream info reply came from the stream's leader. While a
// replicated stream has no leader, every replica answers stream info from its own state,
// which may lag; those replies name no leader. (A standalone server names itself.) A leader
// cut off by a partition may still answer as leader until it notices, which takes an election
// timeout: a known limit of reading from NATS without a write.
func (c *ClusterInfo) FromLeader() bool { return c == nil || c.Leader != "" }

// apiRequest sends a JetStream API request about the stream ($JS.API.<api>.<stream>) and
// returns the reply, within the store's timeout; ErrUnavailable when NATS cannot be asked.
func (s *Store) apiRequest(ctx context.Context, api string, body []byte) (*nats.Msg, error) {
	if s.nc.Status() != nats.CONNECTED {
		return nil, fmt.Errorf("%w: not connected to NATS (%s)", events.ErrUnavailable, s.nc.Status())
	}
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	m, err := s.nc.RequestWithContext(ctx, "$JS.API."+api+"."+s.cfg.Stream, body)
	if err != nil {
		return nil, classify(err)
	}
	return m, nil
}

// lastFor is the sequence of the last message matching filter, asked of the stream leader
// (the non-direct message API); 0 when none.
func (s *Store) lastFor(ctx context.Context, filter string) (uint64, error) {
	req, _ := json.Marshal(struct {
		LastFor string `json:"last_by_subj"`
	}{filter})
	m, err := s.apiRequest(ctx, "STREAM.MSG.GET", req)
	if err != nil {
		return 0, err
	}
	var resp struct {
		Message *struct {
			Sequence uint64 `json:"seq"`
		} `json:"message"`
		Error *struct {
			ErrCode int    `json:"err_code"`
			Desc    string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, fmt.Errorf("eventstore: message get reply: %w", err)
	}
	switch {
	case resp.Error != nil && resp.Error.ErrCode == errNoMessageFound:
		return 0, nil
	case resp.Error != nil:
		return 0, fmt.Errorf("%w: message get: %s", events.ErrUnavailable, resp.Error.Desc)
	case resp.Message == nil:
		return 0, errors.New("eventstore: message get reply without a message")
	}
	return resp.Message.Sequence, nil
}

// errNoMessageFound is JetStream's "no message found" API error.
const errNoMessageFound = 10037

// ReadAll reads up to limit events of every subject from stream sequence `from` on: the reader
// that rebuilds and verification need (projections.StreamReader).
func (s *Store) ReadAll(ctx context.Context, from uint64, limit int) ([]events.Envelope, error) {
	return s.Read(ctx, events.SubjectRoot+".>", from, limit)
}

// SequenceAt is the sequence of the first event stored at or after t, or the stream's last
// sequence + 1 when there is none: where a reader interested in events since t starts.
func (s *Store) SequenceAt(ctx context.Context, t time.Time) (uint64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	req, _ := json.Marshal(struct {
		StartTime time.Time `json:"start_time"`
	}{t.UTC()})
	m, err := s.nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+s.cfg.Stream, req)
	if err != nil {
		return 0, classify(err)
	}
	switch m.Header.Get("Status") {
	case "":
		return strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
	case "404":
		last, err := s.LastSequence(ctx)
		return last + 1, err
	default:
		return 0, fmt.Errorf("%w: direct get: %s %s", events.ErrUnavailable, m.Header.Get("Status"), m.Header.Get("Description"))
	}
}

// RedactURL hides the passwords of NATS URLs (comma-separated, as nats.Connect accepts) so
// they can go into messages and logs.
func RedactURL(raw string) string {
	parts := strings.Split(raw, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil {
			parts[i] = u.Redacted()
		} else {
			parts[i] = "(unparsable URL)"
		}
	}
	return strings.Join(parts, ",")
}
