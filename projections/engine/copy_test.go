package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/uptrace/bun"

	. "github.com/identityd/identityd/projections" //nolint:revive // the registered read models' rows
	"github.com/identityd/identityd/projections/engine"
	"github.com/identityd/identityd/projections/projectiontest"
)

// awkwardStrings are the values COPY's text format must escape, or could be tempted to read as
// something else.
var awkwardStrings = []string{
	"", "plain", "tab\there", "\t", "trailing tab\t", "new\nline", "\n", "cr\rand crlf\r\n",
	`back\slash`, `\`, `trailing backslash\`, `\\double`, `\N`, `\.`, "\\.\n", `\t literally`, `\x41`,
	`'single' "double" quotes`, "unicode: ünïcödé, 中文, עברית, emoji 🙂‍↔️, combining e\u0301",
	"controls \x01\x07\b\v\f\x1b\x7f", "invalid UTF-8 \xff\xfe and a cut rune \xe2\x82", "\u2028\u2029\ufeff",
	strings.Repeat("long \\ \t \n ", 2000),
}

// TestCopyEncodesLikeInsert loads the same awkward rows of every read-model table through
// COPY and through bun's multi-row INSERT and requires PostgreSQL to hold identical rows.
func TestCopyEncodesLikeInsert(t *testing.T) {
	ctx := context.Background()
	viaInsert, viaCopy := Tables{Suffix: "ins"}, Tables{Suffix: "cpy"}
	db, _ := newSchemaDB(t, testBackends[0], viaInsert, viaCopy)

	ns := time.Date(2025, 3, 4, 5, 6, 7, 123456789, projectiontest.Zone) // beyond PostgreSQL's microseconds
	times := []time.Time{ns, ns.UTC(), {}, time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(9999, 12, 31, 10, 59, 59, 999999000, time.FixedZone("", -11*3600)), time.Unix(0, 0)}
	var audit []AuditRow
	var users []UserRow
	var tokens []TokenRow
	var sessions []SessionRow
	for i, s := range awkwardStrings {
		id := uuid.New()
		tm := times[i%len(times)]
		owner := &id
		if i%3 == 0 {
			owner = nil
		}
		versions := []uint64{0, 1, math.MaxInt64}
		audit = append(audit, AuditRow{
			Sequence: uint64(i+1) * (math.MaxInt64 / uint64(len(awkwardStrings))), EventID: s, Type: s, Aggregate: s, UserID: owner,
			Actor: s, RequestID: s, SourceIP: s, UserAgent: s, OccurredAt: tm, SchemaVersion: i - 3, Data: s,
		})
		users = append(users, UserRow{ID: id, Email: s + "@example.com" + fmt.Sprint(i), Name: s, PersonalOrgSlug: s,
			CreatedAt: tm, UpdatedAt: times[(i+1)%len(times)], Version: versions[i%3]})
		var exp *time.Time
		if i%2 == 0 {
			exp = &tm
		}
		tokens = append(tokens, TokenRow{ID: uuid.New(), UserID: id, Description: s, Digest: s + fmt.Sprint(i), CreatedAt: tm, ExpiresAt: exp})
		sessions = append(sessions, SessionRow{ID: uuid.New(), UserID: id, Digest: s + fmt.Sprint(i), CreatedAt: tm, ExpiresAt: tm})
	}

	for _, step := range []func() error{
		func() error { return engine.InsertAll(ctx, db, tableOf(viaInsert, "audit_events"), audit) },
		func() error { return engine.InsertAll(ctx, db, tableOf(viaInsert, "users"), users) },
		func() error { return engine.InsertAll(ctx, db, tableOf(viaInsert, "api_tokens"), tokens) },
		func() error { return engine.InsertAll(ctx, db, tableOf(viaInsert, "sessions"), sessions) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	cs := encoders(t, db)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	defer engine.SetChunks(3000, 1000)() // several COPY statements per table, a chunk boundary inside the long string
	for _, step := range []func() error{
		func() error { return engine.CopyAll(ctx, conn, cs.audit, tableOf(viaCopy, "audit_events"), audit) },
		func() error { return engine.CopyAll(ctx, conn, cs.users, tableOf(viaCopy, "users"), users) },
		func() error { return engine.CopyAll(ctx, conn, cs.tokens, tableOf(viaCopy, "api_tokens"), tokens) },
		func() error { return engine.CopyAll(ctx, conn, cs.sessions, tableOf(viaCopy, "sessions"), sessions) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}

	// PostgreSQL's own rendering of each row, and the rows as bun scans them back.
	for _, tc := range []struct{ table, key string }{
		{"audit_events", "seq"}, {"users", "id"}, {"api_tokens", "id"}, {"sessions", "id"},
	} {
		var want, got []string
		q := "SELECT r::text FROM %s_%s AS r ORDER BY " + tc.key
		if err := db.NewRaw(fmt.Sprintf(q, tc.table, "ins")).Scan(ctx, &want); err != nil {
			t.Fatal(err)
		}
		if err := db.NewRaw(fmt.Sprintf(q, tc.table, "cpy")).Scan(ctx, &got); err != nil {
			t.Fatal(err)
		}
		if len(want) != len(awkwardStrings) || !reflect.DeepEqual(want, got) {
			t.Fatalf("%s: COPY stored other rows than INSERT:\ninsert %q\ncopy   %q", tc.table, want, got)
		}
	}
	var back [2][]AuditRow
	for i, gen := range []Tables{viaInsert, viaCopy} {
		if err := db.NewSelect().Model(&back[i]).ModelTableExpr(tableOf(gen, "audit_events") + " AS a").Order("seq").Scan(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if !reflect.DeepEqual(back[0], back[1]) {
		t.Fatalf("audit rows scanned back differ:\ninsert %+v\ncopy   %+v", back[0], back[1])
	}
	for i, r := range back[1] {
		if want := audit[i]; utf8.ValidString(want.Data) && (r.Data != want.Data || r.Actor != want.Actor) {
			t.Fatalf("row %d: %q, want %q", i, r.Data, want.Data)
		}
	}
}

// copyTypes has a column of every Go type the COPY encoder renders.
type copyTypes struct {
	bun.BaseModel `bun:"table:copy_types"`

	ID    int64      `bun:"id,pk"`
	Bytes []byte     `bun:"bytes"`
	Bool  bool       `bun:"bool,notnull"`
	I8    int8       `bun:"i8,notnull"`
	I16   int16      `bun:"i16,notnull"`
	I32   int32      `bun:"i32,notnull"`
	U8    uint8      `bun:"u8,notnull"`
	U16   uint16     `bun:"u16,notnull"`
	U32   uint32     `bun:"u32,notnull"`
	U     uint       `bun:"u,notnull"`
	Str   *string    `bun:"str"`
	Time  *time.Time `bun:"time"`
	UUID  *uuid.UUID `bun:"uuid,type:uuid"`
}

// TestCopyEncodesTypesLikeInsert: every type the encoder accepts, bytea and NULLs included,
// is stored as bun's INSERT stores it.
func TestCopyEncodesTypesLikeInsert(t *testing.T) {
	ctx := context.Background()
	db, _ := newSchemaDB(t, testBackends[0])
	for _, table := range []string{"copy_types_ins", "copy_types_cpy"} {
		if _, err := db.NewCreateTable().Model((*copyTypes)(nil)).ModelTableExpr(table).Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	now, id := time.Now(), uuid.New()
	rows := []copyTypes{
		{ID: 1},
		{ID: 2, Bytes: []byte{}, Bool: true, I8: math.MinInt8, I16: math.MinInt16, I32: math.MinInt32, U8: math.MaxUint8,
			U16: math.MaxInt16, U32: math.MaxInt32, U: 1 << 62, Str: projectiontest.Ptr(""), Time: &now, UUID: &id},
		{ID: 3, Bytes: []byte("\x00\\\t\n\r\xff binary"), I8: math.MaxInt8, I16: math.MaxInt16, I32: math.MaxInt32,
			Str: projectiontest.Ptr(`\N`), Time: &time.Time{}, UUID: &uuid.Nil},
	}
	if err := engine.InsertAll(ctx, db, "copy_types_ins", rows); err != nil {
		t.Fatal(err)
	}
	enc, err := engine.NewCopyEncoder[copyTypes](db)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if err := engine.CopyAll(ctx, conn, enc, "copy_types_cpy", rows); err != nil {
		t.Fatal(err)
	}
	var want, got []string
	if err := db.NewRaw("SELECT r::text FROM copy_types_ins AS r ORDER BY id").Scan(ctx, &want); err != nil {
		t.Fatal(err)
	}
	if err := db.NewRaw("SELECT r::text FROM copy_types_cpy AS r ORDER BY id").Scan(ctx, &got); err != nil {
		t.Fatal(err)
	}
	if len(want) != len(rows) || !reflect.DeepEqual(want, got) {
		t.Fatalf("COPY stored other rows than INSERT:\ninsert %q\ncopy   %q", want, got)
	}
}

// TestCopyRefusesNul: PostgreSQL text cannot hold NUL bytes; like bun's INSERT, COPY refuses
// them instead of storing something else.
func TestCopyRefusesNul(t *testing.T) {
	ctx := context.Background()
	db, _ := newSchemaDB(t, testBackends[0], CurrentTables)
	row := []AuditRow{{Sequence: 1, Data: "nul\x00byte"}}
	if err := engine.InsertAll(ctx, db, tableOf(CurrentTables, "audit_events"), row); err == nil {
		t.Fatal("INSERT stored a NUL byte")
	}
	enc, err := engine.NewCopyEncoder[AuditRow](db)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := enc.AppendRow(nil, &row[0]); !errors.Is(err, engine.ErrCopyNul) {
		t.Fatalf("COPY encoding of a NUL byte: %v", err)
	}
}

// TestCopyFailureLeavesConnectionUsable: a COPY the server rejects halfway through its rows
// (a duplicate key) fails with the server's error, stores nothing, and leaves the connection
// ready for the next statement.
func TestCopyFailureLeavesConnectionUsable(t *testing.T) {
	ctx := context.Background()
	db, _ := newSchemaDB(t, testBackends[0], CurrentTables)
	enc, err := engine.NewCopyEncoder[AuditRow](db)
	if err != nil {
		t.Fatal(err)
	}
	rows := make([]AuditRow, 5000)
	for i := range rows {
		rows[i] = AuditRow{Sequence: uint64(i%4000) + 1, EventID: fmt.Sprint("event-", i%4000), Data: strings.Repeat("x", 100)}
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = conn.Close() }()
	if err := engine.CopyAll(ctx, conn, enc, tableOf(CurrentTables, "audit_events"), rows); err == nil || !strings.Contains(err.Error(), "23505") {
		t.Fatalf("COPY of duplicate keys: %v", err)
	}
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM "+tableOf(CurrentTables, "audit_events")).Scan(&n); err != nil || n != 0 {
		t.Fatalf("after the failed COPY: %d rows, %v", n, err)
	}
	if err := engine.CopyAll(ctx, conn, enc, tableOf(CurrentTables, "audit_events"), rows[:4000]); err != nil {
		t.Fatalf("COPY on the same connection afterwards: %v", err)
	}
}

// TestCopyColumnsAreInsertColumns: the COPY column list is the one bun's INSERT writes, in the
// same order, for every table the rebuild copies into.
func TestCopyColumnsAreInsertColumns(t *testing.T) {
	db, _ := newSchemaDB(t, testBackends[0])
	check := func(model any, columns string) {
		t.Helper()
		q := db.NewInsert().Model(model).ModelTableExpr("x").String()
		open := strings.IndexByte(q, '(')
		if open < 0 || !strings.HasPrefix(q[open:], "("+columns+") VALUES") {
			t.Fatalf("COPY columns (%s) differ from the INSERT's: %s", columns, q)
		}
	}
	cs := encoders(t, db)
	check(&AuditRow{}, cs.audit.Columns())
	check(&UserRow{}, cs.users.Columns())
	check(&TokenRow{}, cs.tokens.Columns())
	check(&SessionRow{}, cs.sessions.Columns())
	if got := cs.audit.Statement("audit_events_x"); !strings.HasPrefix(got, `COPY audit_events_x ("seq", "event_id", `) ||
		!strings.HasSuffix(got, `"data") FROM STDIN`) {
		t.Fatalf("statement: %s", got)
	}
}

// TestCopyEncoderRefusesWhatItCannotMirror: columns whose INSERT rendering COPY would not
// reproduce are refused when the encoder is built.
func TestCopyEncoderRefusesWhatItCannotMirror(t *testing.T) {
	db, _ := newSchemaDB(t, testBackends[0])
	type nullZero struct {
		bun.BaseModel `bun:"table:x"`
		S             string `bun:"s,nullzero"`
	}
	type withDefault struct {
		bun.BaseModel `bun:"table:x"`
		S             string `bun:"s,default:'x'"`
	}
	type autoIncrement struct {
		bun.BaseModel `bun:"table:x"`
		ID            int64 `bun:"id,pk,autoincrement"`
	}
	type jsonMap struct {
		bun.BaseModel `bun:"table:x"`
		M             map[string]string `bun:"m"`
	}
	type valuer struct {
		bun.BaseModel `bun:"table:x"`
		V             fmt.Stringer `bun:"v"`
	}
	type rawJSON struct {
		bun.BaseModel `bun:"table:x"`
		J             json.RawMessage `bun:"j"`
	}
	type ip struct {
		bun.BaseModel `bun:"table:x"`
		IP            net.IP `bun:"ip"`
	}
	type jsonString struct {
		bun.BaseModel `bun:"table:x"`
		S             string `bun:"s,type:jsonb"`
	}
	type array struct {
		bun.BaseModel `bun:"table:x"`
		A             []string `bun:"a,array"`
	}
	type duration struct { // a driver.Valuer-free named int renders as an int: accepted
		bun.BaseModel `bun:"table:x"`
		D             time.Duration `bun:"d"`
	}
	if _, err := engine.NewCopyEncoder[duration](db); err != nil {
		t.Errorf("duration: %v", err)
	}
	for name, err := range map[string]error{
		"nullzero":      func() error { _, err := engine.NewCopyEncoder[nullZero](db); return err }(),
		"default":       func() error { _, err := engine.NewCopyEncoder[withDefault](db); return err }(),
		"autoincrement": func() error { _, err := engine.NewCopyEncoder[autoIncrement](db); return err }(),
		"map":           func() error { _, err := engine.NewCopyEncoder[jsonMap](db); return err }(),
		"interface":     func() error { _, err := engine.NewCopyEncoder[valuer](db); return err }(),
		"raw JSON":      func() error { _, err := engine.NewCopyEncoder[rawJSON](db); return err }(),
		"net.IP":        func() error { _, err := engine.NewCopyEncoder[ip](db); return err }(),
		"jsonb string":  func() error { _, err := engine.NewCopyEncoder[jsonString](db); return err }(),
		"array":         func() error { _, err := engine.NewCopyEncoder[array](db); return err }(),
	} {
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

// TestAppendCopyText pins the escaping of the COPY text format.
func TestAppendCopyText(t *testing.T) {
	for in, want := range map[string]string{
		"":              "",
		"a\tb\nc\rd\\e": `a\tb\nc\rd\\e`,
		`\N`:            `\\N`,
		"ü🙂":            "ü🙂",
		"bad \xff":      "bad \ufffd",
		"\x01\v":        "\x01\v",
	} {
		got, err := engine.AppendCopyText([]byte("x"), in)
		if err != nil || string(got) != "x"+want {
			t.Errorf("engine.AppendCopyText(%q) = %q, %v; want %q", in, got, err, "x"+want)
		}
	}
	if got := string(engine.AppendUUID(nil, projectiontest.AliceID)); got != projectiontest.AliceID.String() {
		t.Errorf("appendUUID = %s", got)
	}
}

// rowEncoders are the COPY encoders of the registered read models' rows.
type rowEncoders struct {
	audit    *engine.CopyEncoder[AuditRow]
	users    *engine.CopyEncoder[UserRow]
	tokens   *engine.CopyEncoder[TokenRow]
	sessions *engine.CopyEncoder[SessionRow]
}

func encoders(t *testing.T, db bun.IDB) rowEncoders {
	t.Helper()
	var e rowEncoders
	var err error
	if e.audit, err = engine.NewCopyEncoder[AuditRow](db); err != nil {
		t.Fatal(err)
	}
	if e.users, err = engine.NewCopyEncoder[UserRow](db); err != nil {
		t.Fatal(err)
	}
	if e.tokens, err = engine.NewCopyEncoder[TokenRow](db); err != nil {
		t.Fatal(err)
	}
	if e.sessions, err = engine.NewCopyEncoder[SessionRow](db); err != nil {
		t.Fatal(err)
	}
	return e
}
