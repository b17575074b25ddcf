package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/gin-gonic/gin"

	"github.com/identityd/identityd/domain"
	"github.com/identityd/identityd/events"
)

type countingBarrier struct{ calls int }

func (b *countingBarrier) WaitFor(context.Context, uint64) error { b.calls++; return nil }

type failingFence struct{ calls int }

func (f *failingFence) Fence(context.Context, uint64, time.Time) error {
	f.calls++
	return errors.New("an instance still holds a lease")
}

// settleFor picks the wait from the write's effect: a plain read-your-writes wait for writes
// that change nothing cached, the credential cache's fence for profile and rights changes,
// and for narrowed rights a 503 when the fence does not complete (the wait each handler chose
// by hand before: settle, settleChange, settleRevocation).
func TestSettleForChoosesTheWaitFromTheEffect(t *testing.T) {
	gin.SetMode(gin.ReleaseMode)
	for _, tc := range []struct {
		effect      events.Effect
		wantFence   bool
		wantAnswers bool // the handler may answer (no 503)
	}{
		{events.EffectNone, false, true},
		{events.EffectAddsCredential, false, true},
		{events.EffectProfileOnly, true, true},
		{events.EffectWidensRights, true, true},
		{events.EffectNarrowsRights, true, false},
	} {
		t.Run(tc.effect.String(), func(t *testing.T) {
			barrier, fence := &countingBarrier{}, &failingFence{}
			a := &API{cfg: Config{Barrier: barrier, Fence: fence, ConsistencyTimeout: time.Second, Logger: slog.New(slog.DiscardHandler)}}
			w := httptest.NewRecorder()
			c, _ := gin.CreateTestContext(w)
			c.Request = httptest.NewRequest(http.MethodPost, "/", nil)
			answers := a.settleFor(c, domain.Result{Seq: 7, Effect: tc.effect})
			if barrier.calls != 1 || (fence.calls == 1) != tc.wantFence || answers != tc.wantAnswers {
				t.Errorf("barrier waits %d, fence waits %d, answers %v; want 1, fence %v, answers %v",
					barrier.calls, fence.calls, answers, tc.wantFence, tc.wantAnswers)
			}
			if !answers && w.Code != http.StatusServiceUnavailable {
				t.Errorf("status %d, want 503 when narrowed rights are not yet in effect everywhere", w.Code)
			}
		})
	}
}
