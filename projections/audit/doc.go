// Package audit is the audit-log read model: every applied event with its metadata, secret
// fields redacted, queryable by user, type, actor and time (ReadModel.AuditEvents). It is
// append-only, so a rebuild streams its rows as it folds; and since it holds each event's id,
// unique, it is the engine's replay guard (Projection.Applied).
package audit
