//! The user service's tables: profiles, teams, and its event outbox. Every
//! change that must be audited writes its event in the same transaction.

use sqlx::Row;
use sqlx::any::AnyRow;
use trustmesh_events::Event;
use trustmesh_events::outbox::record;
use trustmesh_store::{Db, StoreError, timestamp};

/// The roles a user can hold.
pub const ROLES: &[&str] = &["user", "manager", "admin", "finance", "audit"];

/// A stored profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileRow {
    /// The user id (UUID, shared with auth).
    pub user_id: String,
    /// The normalised email.
    pub email: String,
    /// The display name.
    pub display_name: String,
    /// The role.
    pub role: String,
    /// The team, if any.
    pub team_id: Option<String>,
    /// When the profile was created (RFC 3339 UTC).
    pub created_at: String,
}

/// A stored team with its members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamRow {
    /// The team id.
    pub team_id: String,
    /// Its unique name.
    pub name: String,
    /// Its manager's user id.
    pub manager_id: String,
    /// Its members' user ids.
    pub member_ids: Vec<String>,
}

/// A committed role change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleChanged {
    /// The role before the change.
    pub from: String,
    /// The session revocation the change owes, committed with it; `None`
    /// when the user already had the role (nothing changed, nothing is
    /// recorded, no session ends).
    pub revocation: Option<PendingRevocation>,
}

/// A revocation of every session of a user that a role change owes and
/// the auth service has not yet confirmed (`pending_revocations`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRevocation {
    /// Its id (UUID v7).
    pub revocation_id: String,
    /// Whose sessions end.
    pub user_id: String,
    /// Who changed the role (a user id, or `ops`).
    pub requested_by: String,
    /// When the role changed (stored form, [`trustmesh_store::timestamp`]).
    pub requested_at: String,
}

/// Why a role change was refused by the domain rules.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RoleChangeError {
    /// No such user.
    #[error("no such user")]
    NotFound,
    /// The change would leave the mesh without an admin.
    #[error("the last admin cannot be demoted")]
    LastAdmin,
}

const PROFILE_COLUMNS: &str = "user_id, email, display_name, role, team_id, created_at";

fn profile(row: &AnyRow) -> Result<ProfileRow, sqlx::Error> {
    Ok(ProfileRow {
        user_id: row.try_get("user_id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        role: row.try_get("role")?,
        team_id: row.try_get("team_id")?,
        created_at: row.try_get("created_at")?,
    })
}

/// The current time in the stored form of every time column
/// ([`trustmesh_store::timestamp`]: RFC 3339 UTC with six fractional
/// digits, whose text order is their time order).
pub fn now() -> String {
    timestamp(time::OffsetDateTime::now_utc())
}

/// Queries over a user-service database.
#[derive(Debug, Clone)]
pub struct UserStore {
    db: Db,
}

impl UserStore {
    /// Wraps an open (migrated) database.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates the profile of `user_id` unless it exists; returns it.
    pub async fn ensure_profile(
        &self,
        user_id: &str,
        email: &str,
    ) -> Result<ProfileRow, StoreError> {
        sqlx::query(
            "INSERT INTO profiles (user_id, email, display_name, role, created_at) \
             VALUES ($1, $2, '', 'user', $3) ON CONFLICT (user_id) DO NOTHING",
        )
        .bind(user_id)
        .bind(email)
        .bind(now())
        .execute(self.db.pool())
        .await?;
        self.profile(user_id)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// The profile of `user_id`.
    pub async fn profile(&self, user_id: &str) -> Result<Option<ProfileRow>, StoreError> {
        let sql = format!("SELECT {PROFILE_COLUMNS} FROM profiles WHERE user_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(profile).transpose()?)
    }

    /// The profile with this (normalised) email.
    pub async fn profile_by_email(&self, email: &str) -> Result<Option<ProfileRow>, StoreError> {
        let sql = format!("SELECT {PROFILE_COLUMNS} FROM profiles WHERE email = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(email)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(profile).transpose()?)
    }

    /// Sets the (already verified and normalised) email.
    pub async fn set_email(&self, user_id: &str, email: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE profiles SET email = $1 WHERE user_id = $2")
            .bind(email)
            .bind(user_id)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Sets the display name.
    pub async fn set_display_name(&self, user_id: &str, name: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE profiles SET display_name = $1 WHERE user_id = $2")
            .bind(name)
            .bind(user_id)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Profiles ordered by id, after `after`, at most `limit`.
    pub async fn list(&self, after: &str, limit: u32) -> Result<Vec<ProfileRow>, StoreError> {
        let sql = format!(
            "SELECT {PROFILE_COLUMNS} FROM profiles WHERE user_id > $1 ORDER BY user_id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.iter().map(profile).collect::<Result<_, _>>()?)
    }

    /// Changes the role of `user_id` to `role`, refusing to demote the last
    /// admin, and records a `ROLE_CHANGED` event and the revocation of the
    /// user's sessions the change owes in the same transaction. Role
    /// changes are serialised (the admin count cannot race).
    pub async fn set_role(
        &self,
        user_id: &str,
        role: &str,
        changed_by: &str,
    ) -> Result<Result<RoleChanged, RoleChangeError>, StoreError> {
        let mut tx = self.db.pool().begin().await?;
        // Serialise role changes before reading anything: touching every
        // admin row takes SQLite's write lock / PostgreSQL's row locks on
        // the admins, so a concurrent demotion waits here and then counts
        // the admins as they are after the first one committed.
        sqlx::query("UPDATE profiles SET role = role WHERE role = 'admin'")
            .execute(&mut *tx)
            .await?;
        let touched = sqlx::query("UPDATE profiles SET role = role WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if touched.rows_affected() == 0 {
            return Ok(Err(RoleChangeError::NotFound));
        }
        let from: String = sqlx::query_scalar("SELECT role FROM profiles WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        if from == role {
            return Ok(Ok(RoleChanged {
                from,
                revocation: None,
            }));
        }
        if from == "admin" && role != "admin" {
            let admins: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM profiles WHERE role = 'admin'")
                    .fetch_one(&mut *tx)
                    .await?;
            if admins <= 1 {
                // The refusal is audited too (the no-op updates above
                // changed nothing, so committing only adds the event).
                let details = serde_json::json!({
                    "from": from, "to": role, "changed_by": changed_by, "reason": "last_admin",
                });
                record(
                    &mut tx,
                    &Event::new("user", "ROLE_CHANGED", user_id)
                        .failed()
                        .by_user(changed_by)
                        .details(details),
                )
                .await?;
                tx.commit().await?;
                return Ok(Err(RoleChangeError::LastAdmin));
            }
        }
        sqlx::query("UPDATE profiles SET role = $1 WHERE user_id = $2")
            .bind(role)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        let details = serde_json::json!({"from": from, "to": role, "changed_by": changed_by});
        record(
            &mut tx,
            &Event::new("user", "ROLE_CHANGED", user_id)
                .by_user(changed_by)
                .details(details),
        )
        .await?;
        let revocation = PendingRevocation {
            revocation_id: uuid::Uuid::now_v7().to_string(),
            user_id: user_id.to_owned(),
            requested_by: changed_by.to_owned(),
            requested_at: now(),
        };
        sqlx::query(
            "INSERT INTO pending_revocations (revocation_id, user_id, requested_by, requested_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(&revocation.revocation_id)
        .bind(&revocation.user_id)
        .bind(&revocation.requested_by)
        .bind(&revocation.requested_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(RoleChanged {
            from,
            revocation: Some(revocation),
        }))
    }

    /// Up to `limit` revocations not yet confirmed that were asked for at
    /// or before `due` (stored form), oldest first.
    pub async fn due_revocations(
        &self,
        due: &str,
        limit: u32,
    ) -> Result<Vec<PendingRevocation>, StoreError> {
        let rows = sqlx::query(
            "SELECT revocation_id, user_id, requested_by, requested_at FROM pending_revocations \
             WHERE requested_at <= $1 ORDER BY requested_at, revocation_id LIMIT $2",
        )
        .bind(due)
        .bind(i64::from(limit))
        .fetch_all(self.db.pool())
        .await?;
        let revocation = |row: &AnyRow| -> Result<PendingRevocation, sqlx::Error> {
            Ok(PendingRevocation {
                revocation_id: row.try_get("revocation_id")?,
                user_id: row.try_get("user_id")?,
                requested_by: row.try_get("requested_by")?,
                requested_at: row.try_get("requested_at")?,
            })
        };
        Ok(rows.iter().map(revocation).collect::<Result<_, _>>()?)
    }

    /// Forgets a revocation the auth service confirmed; whether it was
    /// still pending.
    pub async fn revocation_done(&self, revocation_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pending_revocations WHERE revocation_id = $1")
            .bind(revocation_id)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Deletes the profile of `user_id` (removing it from any team it
    /// manages) and the revocations still owed for it, and records
    /// `user.deleted` in the same transaction.
    pub async fn delete(&self, user_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.db.pool().begin().await?;
        let done = sqlx::query("DELETE FROM profiles WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        // Auth ended the account's sessions before the profile goes: a
        // revocation still owed for it has nothing left to end.
        sqlx::query("DELETE FROM pending_revocations WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            &Event::new("user", "USER_DELETED", user_id).by_user(user_id),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Creates a team managed by `manager_id` (who joins it).
    pub async fn create_team(&self, name: &str, manager_id: &str) -> Result<TeamRow, StoreError> {
        let team_id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.db.pool().begin().await?;
        sqlx::query(
            "INSERT INTO teams (team_id, name, manager_id, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&team_id)
        .bind(name)
        .bind(manager_id)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        sqlx::query("UPDATE profiles SET team_id = $1 WHERE user_id = $2")
            .bind(&team_id)
            .bind(manager_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.team(&team_id)
            .await?
            .ok_or(StoreError::Query(sqlx::Error::RowNotFound))
    }

    /// A team and its members.
    pub async fn team(&self, team_id: &str) -> Result<Option<TeamRow>, StoreError> {
        let Some(row) =
            sqlx::query("SELECT team_id, name, manager_id FROM teams WHERE team_id = $1")
                .bind(team_id)
                .fetch_optional(self.db.pool())
                .await?
        else {
            return Ok(None);
        };
        let member_ids: Vec<String> =
            sqlx::query_scalar("SELECT user_id FROM profiles WHERE team_id = $1 ORDER BY user_id")
                .bind(team_id)
                .fetch_all(self.db.pool())
                .await?;
        Ok(Some(TeamRow {
            team_id: row.try_get("team_id")?,
            name: row.try_get("name")?,
            manager_id: row.try_get("manager_id")?,
            member_ids,
        }))
    }

    /// Puts `user_id` in `team_id`.
    pub async fn add_member(&self, team_id: &str, user_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE profiles SET team_id = $1 WHERE user_id = $2")
            .bind(team_id)
            .bind(user_id)
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}
