//! The `trustmesh.auth.v1.Auth` gRPC service: registration with mandatory
//! TOTP, the two-step MFA login, sessions with rotating refresh tokens, and
//! the JWKS. The policy layer has decided who may call; handlers apply the
//! rules of the auth domain.
//!
//! Status messages start with a stable reason code (`invalid_credentials:
//! …`); the gateway maps them to HTTP.

use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status};
use trustmesh_keyring::KeyRing;
use trustmesh_policy::Subject;
use trustmesh_proto::trustmesh::auth::v1::auth_server::Auth;
use trustmesh_proto::trustmesh::auth::v1::*;
use trustmesh_proto::trustmesh::user::v1::user_client::UserClient;
use trustmesh_proto::trustmesh::user::v1::{EnsureProfileRequest, GetRoleRequest};
use trustmesh_runtime::MeshChannel;
use trustmesh_store::StoreError;
use trustmesh_tokens::TokenIssuer;

use crate::hash_pool::HashPool;
use crate::lockout::LockoutPolicy;
use crate::password::{Hasher, check_policy};
use crate::store::{
    Account, AuthStore, CodeCheck, Failure, MfaOutcome, MfaStep, RefreshUse, SessionRow, unix_now,
};
use crate::{email, recovery, totp};

/// The longest reason [`Auth::revoke_user_sessions`] records.
const MAX_REASON: usize = 40;

/// Lifetimes and limits of the auth domain.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Failed-login lockout rules.
    pub lockout: LockoutPolicy,
    /// A session ends after this long without a refresh.
    pub session_idle: Duration,
    /// A session ends this long after login, whatever happens.
    pub session_max: Duration,
    /// How long an MFA ticket (between the two login steps) lives.
    pub mfa_ticket_ttl: Duration,
    /// How long an unconfirmed enrolment lives.
    pub enrollment_ttl: Duration,
    /// Wrong codes allowed per MFA ticket or enrolment.
    pub max_code_attempts: i64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            lockout: LockoutPolicy::default(),
            session_idle: Duration::from_secs(30 * 60),
            session_max: Duration::from_secs(12 * 3600),
            mfa_ticket_ttl: Duration::from_secs(5 * 60),
            enrollment_ttl: Duration::from_secs(30 * 60),
            max_code_attempts: 5,
        }
    }
}

/// The auth service.
#[derive(Clone)]
pub struct AuthService {
    store: AuthStore,
    hasher: Arc<Hasher>,
    /// Where Argon2id runs: low-priority threads, one per core but one by
    /// default, so a burst of logins queues for the hasher instead of
    /// taking every core from the rest of the service (see [`HashPool`]).
    hashing: HashPool,
    secrets: Arc<KeyRing>,
    tokens: TokenIssuer,
    users: UserClient<MeshChannel>,
    settings: AuthSettings,
}

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").finish_non_exhaustive()
    }
}

/// `reason: message` as the status message, the convention the gateway maps.
fn status(code: tonic::Code, reason: &str, message: &str) -> Status {
    Status::new(code, format!("{reason}: {message}"))
}

fn internal(e: StoreError) -> Status {
    trustmesh_runtime::store_status("auth", &e)
}

fn invalid_credentials() -> Status {
    status(
        tonic::Code::Unauthenticated,
        "invalid_credentials",
        "wrong email or password",
    )
}

/// A fresh 256-bit random token, URL-safe base64 without padding.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}

/// How tokens are stored: SHA-256, hex.
fn token_hash(token: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(token.as_bytes()))
}

fn metadata_text<T>(request: &Request<T>, name: &str) -> String {
    request
        .metadata()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(512).collect())
        .unwrap_or_default()
}

fn locked(retry_after: i64) -> Status {
    let mut status = status(
        tonic::Code::ResourceExhausted,
        "account_locked",
        "too many failed attempts; try again later",
    );
    if let Ok(value) = retry_after.max(1).to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

/// The TOTP seed of `account`, unsealed with `secrets`.
fn totp_secret(
    secrets: &KeyRing,
    account: &Account,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Status> {
    let sealed = data_encoding::BASE64
        .decode(account.totp_sealed.as_bytes())
        .map_err(|_| Status::internal("corrupt TOTP seed"))?;
    secrets
        .open_sealed(&sealed, account.user_id.as_bytes())
        .map_err(|e| {
            tracing::error!(user_id = %account.user_id, error = %e, "cannot unseal a TOTP seed");
            Status::internal("cannot read the TOTP seed")
        })
}

impl AuthService {
    /// A service over `store`, hashing passwords with `hasher` on the
    /// threads of `hashing`, sealing TOTP seeds with `secrets`, signing
    /// access tokens with `tokens`, and asking the user service (`users`)
    /// for roles.
    pub fn new(
        store: AuthStore,
        hasher: Hasher,
        hashing: HashPool,
        secrets: KeyRing,
        tokens: TokenIssuer,
        users: MeshChannel,
        settings: AuthSettings,
    ) -> Self {
        Self {
            store,
            hasher: Arc::new(hasher),
            hashing,
            secrets: Arc::new(secrets),
            tokens,
            users: UserClient::new(users),
            settings,
        }
    }

    async fn hash_password(&self, password: String) -> Result<String, Status> {
        let hasher = self.hasher.clone();
        self.hashing
            .run(move || hasher.hash(&password))
            .await
            .map_err(|_| Status::internal("hashing failed"))?
            .map_err(|e| {
                tracing::error!(error = %e, "password hashing failed");
                Status::internal("hashing failed")
            })
    }

    /// Verifies a password off the async threads; `(ok, needs_rehash)`.
    async fn verify_password(
        &self,
        password: String,
        phc: Option<String>,
    ) -> Result<(bool, bool), Status> {
        let hasher = self.hasher.clone();
        self.hashing
            .run(move || match phc {
                Some(phc) => hasher
                    .verify(&password, &phc)
                    .map(|v| (v.ok, v.needs_rehash))
                    .unwrap_or((false, false)),
                None => {
                    // Unknown account: spend the same time as a real check.
                    hasher.dummy_verify(&password);
                    (false, false)
                }
            })
            .await
            .map_err(|_| Status::internal("verification failed"))
    }

    fn totp_secret(&self, account: &Account) -> Result<zeroize::Zeroizing<Vec<u8>>, Status> {
        totp_secret(&self.secrets, account)
    }

    /// Records a failed login (and its `LOGIN_FAILED` event, with `reason`)
    /// and locks the account when it reaches the limit, in one transaction.
    async fn fail_login(
        &self,
        account: Option<&Account>,
        client_ip: &str,
        user_agent: &str,
        reason: &str,
    ) -> Result<(), Status> {
        let failure = Failure {
            account,
            client_ip,
            user_agent,
            reason,
        };
        let locked = self
            .store
            .record_failure(&failure, &self.settings.lockout)
            .await
            .map_err(internal)?;
        if let (Some(account), Some(until)) = (account, locked) {
            tracing::warn!(user_id = %account.user_id, %client_ip, until, "account locked");
        }
        Ok(())
    }

    /// Checks the password of an existing account for a sensitive change
    /// (password or email change, account deletion). A wrong password counts
    /// toward the lockout like a failed login, and a locked account is
    /// refused (423), so a stolen access token cannot be used to guess the
    /// password.
    async fn recheck_password(
        &self,
        account: &Account,
        password: String,
        client_ip: &str,
    ) -> Result<bool, Status> {
        let now = unix_now();
        if let Some(until) = self
            .store
            .locked_until(&account.user_id, now)
            .await
            .map_err(internal)?
        {
            return Err(locked(until - now));
        }
        let (ok, _) = self
            .verify_password(password, Some(account.password_hash.clone()))
            .await?;
        if !ok {
            self.fail_login(Some(account), client_ip, "", "wrong_password")
                .await?;
        }
        Ok(ok)
    }

    /// The account of `user_id` once its `password` is rechecked (see
    /// [`Self::recheck_password`]): `NOT_FOUND` without such an account,
    /// `PERMISSION_DENIED` (`wrong_password`) for a wrong password.
    async fn account_with_password(
        &self,
        user_id: &str,
        password: String,
        client_ip: &str,
    ) -> Result<Account, Status> {
        let account = self
            .store
            .account(user_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                status(
                    tonic::Code::NotFound,
                    "account_not_found",
                    "no such account",
                )
            })?;
        if !self.recheck_password(&account, password, client_ip).await? {
            return Err(status(
                tonic::Code::PermissionDenied,
                "wrong_password",
                "the current password is wrong",
            ));
        }
        Ok(account)
    }

    async fn check_ip(&self, client_ip: &str) -> Result<(), Status> {
        let limit = self.settings.lockout.per_ip_max_failures;
        if client_ip.is_empty() || limit == 0 {
            return Ok(());
        }
        let window = self.settings.lockout.window.as_secs() as i64;
        let failures = self
            .store
            .failures_for_ip(client_ip, unix_now() - window)
            .await
            .map_err(internal)?;
        if failures >= i64::from(limit) {
            tracing::warn!(%client_ip, failures, "login rate limit for this address");
            return Err(status(
                tonic::Code::ResourceExhausted,
                "too_many_attempts",
                "too many failed logins from this address",
            ));
        }
        Ok(())
    }

    /// The role of `user_id` as the user service has it; `None` when it
    /// has no profile for the user yet.
    async fn fetch_role(&self, user_id: &str) -> Result<Option<String>, Status> {
        let mut users = self.users.clone();
        match users
            .get_role(GetRoleRequest {
                user_id: user_id.to_owned(),
            })
            .await
        {
            Ok(reply) => Ok(Some(reply.into_inner().role)),
            Err(e) if e.code() == tonic::Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The role of `account`, creating its profile (with the default role)
    /// when the user service has none; `fetched` is what [`Self::fetch_role`]
    /// already returned, if it was asked.
    async fn role_of(
        &self,
        account: &Account,
        fetched: Option<Option<String>>,
    ) -> Result<String, Status> {
        let fetched = match fetched {
            Some(fetched) => fetched,
            None => self.fetch_role(&account.user_id).await?,
        };
        if let Some(role) = fetched {
            return Ok(role);
        }
        let mut users = self.users.clone();
        let profile = users
            .ensure_profile(EnsureProfileRequest {
                user_id: account.user_id.clone(),
                email: account.email.clone(),
            })
            .await?
            .into_inner();
        Ok(profile.role)
    }

    fn token_reply(
        &self,
        session: &SessionRow,
        role: &str,
        refresh: String,
    ) -> Result<TokenReply, Status> {
        let amr: Vec<&str> = session.amr.split(',').filter(|s| !s.is_empty()).collect();
        let (access, claims) = self
            .tokens
            .issue(&session.user_id, role, &session.session_id, &amr)
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sign an access token");
                Status::internal("cannot sign an access token")
            })?;
        Ok(TokenReply {
            access_token: access,
            refresh_token: refresh,
            expires_in_seconds: claims.exp - claims.iat,
            session_id: session.session_id.clone(),
            user_id: session.user_id.clone(),
            role: role.to_owned(),
        })
    }

    fn session_active(&self, session: &SessionRow) -> bool {
        session.is_active(unix_now(), self.settings.session_idle.as_secs() as i64)
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterReply>, Status> {
        let req = request.into_inner();
        let email = email::normalize(&req.email).map_err(|e| {
            status(
                tonic::Code::InvalidArgument,
                "invalid_email",
                &e.to_string(),
            )
        })?;
        check_policy(&req.password, &email)
            .map_err(|rule| status(tonic::Code::InvalidArgument, rule.code(), &rule.to_string()))?;
        if self
            .store
            .account_by_email(&email)
            .await
            .map_err(internal)?
            .is_some()
        {
            return Err(status(
                tonic::Code::AlreadyExists,
                "email_taken",
                "an account with this email exists",
            ));
        }
        let user_id = uuid::Uuid::now_v7().to_string();
        let password_hash = self.hash_password(req.password).await?;
        let enrollment = totp::Enrollment::new(&email).map_err(|e| {
            tracing::error!(error = %e, "cannot create a TOTP enrolment");
            Status::internal("cannot create the TOTP enrolment")
        })?;
        let sealed = self
            .secrets
            .seal(&enrollment.secret_bytes, user_id.as_bytes())
            .map_err(|e| {
                tracing::error!(error = %e, "cannot seal a TOTP seed");
                Status::internal("cannot seal the TOTP seed")
            })?;
        let token = random_token();
        let account = Account {
            user_id: user_id.clone(),
            email,
            password_hash,
            totp_sealed: data_encoding::BASE64.encode(&sealed),
            totp_last_step: -1,
            confirmed: false,
            revocations: 0,
        };
        let expires = unix_now() + self.settings.enrollment_ttl.as_secs() as i64;
        if !self
            .store
            .create_account(&account, &token_hash(&token), expires)
            .await
            .map_err(internal)?
        {
            return Err(status(
                tonic::Code::AlreadyExists,
                "email_taken",
                "an account with this email exists",
            ));
        }
        tracing::info!(%user_id, "account registered, awaiting TOTP confirmation");
        Ok(Response::new(RegisterReply {
            user_id,
            enrollment_token: token,
            otpauth_uri: enrollment.otpauth_uri.clone(),
            qr_svg: enrollment.qr_svg.clone(),
        }))
    }

    async fn confirm_registration(
        &self,
        request: Request<ConfirmRegistrationRequest>,
    ) -> Result<Response<ConfirmRegistrationReply>, Status> {
        let req = request.into_inner();
        let hash = token_hash(&req.enrollment_token);
        let user_id = self
            .store
            .enrollment_attempt(&hash, self.settings.max_code_attempts)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                status(
                    tonic::Code::NotFound,
                    "enrollment_not_found",
                    "unknown or expired enrolment",
                )
            })?;
        let account = self
            .store
            .account(&user_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                status(
                    tonic::Code::NotFound,
                    "enrollment_not_found",
                    "unknown or expired enrolment",
                )
            })?;
        let secret = self.totp_secret(&account)?;
        let last = u64::try_from(account.totp_last_step).ok();
        let step = totp::verify(&secret, &req.code, unix_now() as u64, last)
            .map_err(|e| status(tonic::Code::Unauthenticated, "invalid_code", &e.to_string()))?;
        let (codes, hashes) = recovery::generate();
        if !self
            .store
            .confirm(&user_id, &hash, step as i64, &hashes)
            .await
            .map_err(internal)?
        {
            return Err(status(
                tonic::Code::Unauthenticated,
                "code_replayed",
                "this code was already used",
            ));
        }
        let mut users = self.users.clone();
        users
            .ensure_profile(EnsureProfileRequest {
                user_id: user_id.clone(),
                email: account.email.clone(),
            })
            .await?;
        tracing::info!(%user_id, "TOTP enrolment confirmed");
        Ok(Response::new(ConfirmRegistrationReply {
            recovery_codes: codes,
        }))
    }

    async fn login(&self, request: Request<LoginRequest>) -> Result<Response<LoginReply>, Status> {
        let client_ip = metadata_text(&request, "x-client-ip");
        let user_agent = metadata_text(&request, "x-client-user-agent");
        let req = request.into_inner();
        self.check_ip(&client_ip).await?;
        let account = match email::normalize(&req.email) {
            Ok(email) => self
                .store
                .account_by_email(&email)
                .await
                .map_err(internal)?,
            Err(_) => None,
        };
        if let Some(account) = &account
            && let Some(until) = self
                .store
                .locked_until(&account.user_id, unix_now())
                .await
                .map_err(internal)?
        {
            return Err(locked(until - unix_now()));
        }
        // The role the session will carry is asked for while Argon2id runs,
        // so that neither step waits for the user service on its own. It is
        // only awaited once the password is right: a wrong password answers
        // as soon as the hash is checked, exactly like an unknown email
        // (which asks nothing), so the lookup adds no timing difference.
        let confirmed_user = account
            .as_ref()
            .filter(|a| a.confirmed)
            .map(|a| a.user_id.clone());
        let role_lookup = async {
            match confirmed_user {
                Some(user_id) => Some(self.fetch_role(&user_id).await),
                None => None,
            }
        };
        let verification = self.verify_password(
            req.password.clone(),
            account.as_ref().map(|a| a.password_hash.clone()),
        );
        tokio::pin!(role_lookup, verification);
        let mut fetched_role = None;
        let (ok, needs_rehash) = loop {
            tokio::select! {
                verified = &mut verification => break verified?,
                role = &mut role_lookup, if fetched_role.is_none() => fetched_role = Some(role),
            }
        };
        let account = match account {
            Some(account) if ok => account,
            other => {
                let reason = if other.is_some() {
                    "wrong_password"
                } else {
                    "unknown_email"
                };
                self.fail_login(other.as_ref(), &client_ip, &user_agent, reason)
                    .await?;
                return Err(invalid_credentials());
            }
        };
        if !account.confirmed {
            return Err(status(
                tonic::Code::PermissionDenied,
                "account_not_confirmed",
                "confirm the TOTP enrolment first",
            ));
        }
        let fetched_role = match fetched_role {
            Some(fetched) => fetched,
            None => role_lookup.await,
        }
        .transpose()?;
        // The role goes into the ticket, and from there into the session's
        // first access token: the MFA step does not ask the user service
        // again. A role change revokes the user's sessions and deletes their
        // tickets (`RevokeUserSessions`); a ticket written after that by a
        // step that read the account (and so the role) before it is stored
        // without the role (`create_ticket`), and the MFA step asks for the
        // current one.
        let role = self.role_of(&account, fetched_role).await?;
        if needs_rehash {
            let phc = self.hash_password(req.password).await?;
            self.store
                .set_password_hash(&account.user_id, &phc)
                .await
                .map_err(internal)?;
        }
        let ticket = random_token();
        let ttl = self.settings.mfa_ticket_ttl.as_secs() as i64;
        self.store
            .create_ticket(
                &token_hash(&ticket),
                &account.user_id,
                &role,
                account.revocations,
                unix_now() + ttl,
            )
            .await
            .map_err(internal)?;
        Ok(Response::new(LoginReply {
            mfa_ticket: ticket,
            expires_in_seconds: ttl,
        }))
    }

    async fn login_mfa(
        &self,
        request: Request<LoginMfaRequest>,
    ) -> Result<Response<TokenReply>, Status> {
        let client_ip = metadata_text(&request, "x-client-ip");
        let user_agent = metadata_text(&request, "x-client-user-agent");
        let req = request.into_inner();
        let totp_given = match (req.code.is_empty(), req.recovery_code.is_empty()) {
            (false, true) => true,
            (true, false) => false,
            _ => {
                return Err(status(
                    tonic::Code::InvalidArgument,
                    "invalid_request",
                    "give exactly one of code and recovery_code",
                ));
            }
        };
        let refresh = random_token();
        // Checks the code against the account as the transaction read it;
        // the store then spends it (step or recovery code) in that
        // transaction. It runs in the store's writer, so it owns what it
        // needs.
        let check = {
            let secrets = self.secrets.clone();
            let (code, recovery_code) = (req.code, req.recovery_code);
            move |account: &Account| -> CodeCheck {
                if !totp_given {
                    return CodeCheck::Recovery(recovery::hash(&recovery_code));
                }
                let Ok(secret) = totp_secret(&secrets, account) else {
                    return CodeCheck::Unavailable;
                };
                let last = u64::try_from(account.totp_last_step).ok();
                match totp::verify(&secret, &code, unix_now() as u64, last) {
                    Ok(step) => i64::try_from(step)
                        .map_or(CodeCheck::Refused("invalid_code"), CodeCheck::TotpStep),
                    Err(totp::TotpError::Replayed) => CodeCheck::Refused("code_replayed"),
                    Err(_) => CodeCheck::Refused("invalid_code"),
                }
            }
        };
        let mut step = MfaStep {
            ticket_hash: token_hash(&req.mfa_ticket),
            max_attempts: self.settings.max_code_attempts,
            fallback_role: None,
            session_id: uuid::Uuid::now_v7().to_string(),
            refresh_hash: token_hash(&refresh),
            session_max: self.settings.session_max.as_secs() as i64,
            client_ip: client_ip.clone(),
            user_agent,
            lockout: self.settings.lockout,
        };
        let mut outcome = self
            .store
            .login_mfa(&step, check.clone())
            .await
            .map_err(internal)?;
        if let MfaOutcome::RoleMissing(user_id) = &outcome {
            // A ticket from before tickets carried the role: ask, then again.
            let account = self
                .store
                .account(user_id)
                .await
                .map_err(internal)?
                .ok_or_else(invalid_credentials)?;
            step.fallback_role = Some(self.role_of(&account, None).await?);
            outcome = self.store.login_mfa(&step, check).await.map_err(internal)?;
        }
        match outcome {
            MfaOutcome::Opened { session, role } => {
                tracing::info!(user_id = %session.user_id, session_id = %session.session_id, amr = %session.amr, "login");
                // Signed after the commit: the token names a session that exists.
                Ok(Response::new(self.token_reply(&session, &role, refresh)?))
            }
            MfaOutcome::TicketInvalid | MfaOutcome::RoleMissing(_) => Err(status(
                tonic::Code::Unauthenticated,
                "mfa_ticket_invalid",
                "unknown or expired MFA ticket",
            )),
            MfaOutcome::Locked(until) => Err(locked(until - unix_now())),
            MfaOutcome::Refused {
                reason,
                locked_until,
            } => {
                if let Some(until) = locked_until {
                    tracing::warn!(%client_ip, until, "account locked");
                }
                Err(match reason {
                    "code_replayed" => status(
                        tonic::Code::Unauthenticated,
                        "code_replayed",
                        "this code was already used",
                    ),
                    _ if totp_given => {
                        status(tonic::Code::Unauthenticated, "invalid_code", "wrong code")
                    }
                    _ => status(
                        tonic::Code::Unauthenticated,
                        "invalid_code",
                        "wrong or used recovery code",
                    ),
                })
            }
            MfaOutcome::Unavailable => Err(Status::internal("cannot read the TOTP seed")),
        }
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<TokenReply>, Status> {
        let req = request.into_inner();
        let session_id = match self
            .store
            .use_refresh_token(&token_hash(&req.refresh_token))
            .await
            .map_err(internal)?
        {
            RefreshUse::Unknown => {
                return Err(status(
                    tonic::Code::Unauthenticated,
                    "refresh_invalid",
                    "unknown refresh token",
                ));
            }
            RefreshUse::Reused(session_id) => {
                // A spent token came back: someone holds a copy. End the
                // whole session so neither holder can go on.
                self.store
                    .revoke_session(&session_id, "refresh_reuse")
                    .await
                    .map_err(internal)?;
                tracing::warn!(%session_id, "refresh token reused; session revoked");
                return Err(status(
                    tonic::Code::Unauthenticated,
                    "refresh_reused",
                    "this refresh token was already used; the session is revoked",
                ));
            }
            RefreshUse::Fresh(session_id) => session_id,
        };
        let session = self
            .store
            .session(&session_id)
            .await
            .map_err(internal)?
            .filter(|s| self.session_active(s))
            .ok_or_else(|| {
                status(
                    tonic::Code::Unauthenticated,
                    "session_expired",
                    "the session has ended",
                )
            })?;
        let account = self
            .store
            .account(&session.user_id)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                status(
                    tonic::Code::Unauthenticated,
                    "session_expired",
                    "the session has ended",
                )
            })?;
        let role = self.role_of(&account, None).await?;
        let refresh = random_token();
        self.store
            .rotate_refresh(&session.session_id, &token_hash(&refresh))
            .await
            .map_err(internal)?;
        Ok(Response::new(self.token_reply(&session, &role, refresh)?))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutReply>, Status> {
        let me = Subject::of(&request)?;
        self.store
            .revoke_session(&me.sid, "logout")
            .await
            .map_err(internal)?;
        Ok(Response::new(LogoutReply {}))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsReply>, Status> {
        let me = Subject::of(&request)?;
        let sessions = self.store.sessions_of(&me.sub).await.map_err(internal)?;
        let to_text = |t: i64| {
            time::OffsetDateTime::from_unix_timestamp(t)
                .ok()
                .and_then(|t| {
                    t.format(&time::format_description::well_known::Rfc3339)
                        .ok()
                })
                .unwrap_or_default()
        };
        Ok(Response::new(ListSessionsReply {
            sessions: sessions
                .into_iter()
                .filter(|s| self.session_active(s))
                .map(|s| Session {
                    current: s.session_id == me.sid,
                    session_id: s.session_id,
                    created_at: to_text(s.created_at),
                    last_seen_at: to_text(s.last_seen_at),
                    client_ip: s.client_ip,
                    user_agent: s.user_agent,
                })
                .collect(),
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionReply>, Status> {
        let me = Subject::of(&request)?;
        let req = request.into_inner();
        let owned = self
            .store
            .session(&req.session_id)
            .await
            .map_err(internal)?
            .is_some_and(|s| s.user_id == me.sub);
        if !owned {
            return Err(status(
                tonic::Code::NotFound,
                "session_not_found",
                "no such session",
            ));
        }
        self.store
            .revoke_session(&req.session_id, "revoked_by_user")
            .await
            .map_err(internal)?;
        Ok(Response::new(RevokeSessionReply {}))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordReply>, Status> {
        let me = Subject::of(&request)?;
        let client_ip = metadata_text(&request, "x-client-ip");
        let req = request.into_inner();
        let account = self
            .account_with_password(&me.sub, req.current_password, &client_ip)
            .await?;
        check_policy(&req.new_password, &account.email)
            .map_err(|rule| status(tonic::Code::InvalidArgument, rule.code(), &rule.to_string()))?;
        let phc = self.hash_password(req.new_password).await?;
        self.store
            .change_password(&me.sub, &phc, &me.sid)
            .await
            .map_err(internal)?;
        tracing::info!(user_id = %me.sub, "password changed; other sessions revoked");
        Ok(Response::new(ChangePasswordReply {}))
    }

    async fn get_jwks(
        &self,
        _request: Request<GetJwksRequest>,
    ) -> Result<Response<GetJwksReply>, Status> {
        if let Err(e) = self.tokens.keys().rotate_if_due() {
            tracing::error!(error = %e, "signing key rotation failed");
        }
        Ok(Response::new(GetJwksReply {
            jwks_json: self.tokens.keys().jwks_json(),
        }))
    }

    async fn check_session(
        &self,
        request: Request<CheckSessionRequest>,
    ) -> Result<Response<CheckSessionReply>, Status> {
        let req = request.into_inner();
        let active = self
            .store
            .session(&req.session_id)
            .await
            .map_err(internal)?
            .is_some_and(|s| self.session_active(&s));
        Ok(Response::new(CheckSessionReply { active }))
    }

    async fn verify_password(
        &self,
        request: Request<VerifyPasswordRequest>,
    ) -> Result<Response<VerifyPasswordReply>, Status> {
        let client_ip = metadata_text(&request, "x-client-ip");
        let req = request.into_inner();
        let ok = match self.store.account(&req.user_id).await.map_err(internal)? {
            Some(account) => {
                self.recheck_password(&account, req.password, &client_ip)
                    .await?
            }
            None => self.verify_password(req.password, None).await?.0,
        };
        Ok(Response::new(VerifyPasswordReply { ok }))
    }

    async fn delete_account(
        &self,
        request: Request<DeleteAccountRequest>,
    ) -> Result<Response<DeleteAccountReply>, Status> {
        let req = request.into_inner();
        if !self
            .store
            .delete_account(&req.user_id)
            .await
            .map_err(internal)?
        {
            return Err(status(
                tonic::Code::NotFound,
                "account_not_found",
                "no such account",
            ));
        }
        tracing::info!(user_id = %req.user_id, "account deleted");
        Ok(Response::new(DeleteAccountReply {}))
    }

    async fn revoke_user_sessions(
        &self,
        request: Request<RevokeUserSessionsRequest>,
    ) -> Result<Response<RevokeUserSessionsReply>, Status> {
        let req = request.into_inner();
        if uuid::Uuid::parse_str(&req.user_id).is_err() {
            return Err(status(
                tonic::Code::InvalidArgument,
                "invalid_user_id",
                "user_id must be a UUID",
            ));
        }
        let reason_ok = (1..=MAX_REASON).contains(&req.reason.len())
            && req
                .reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_');
        if !reason_ok {
            return Err(status(
                tonic::Code::InvalidArgument,
                "invalid_reason",
                "reason must be 1 to 40 of a-z and _",
            ));
        }
        let requested_by = match req.requested_by.as_str() {
            "" => None,
            "ops" => Some("ops"),
            id if uuid::Uuid::parse_str(id).is_ok() => Some(id),
            _ => {
                return Err(status(
                    tonic::Code::InvalidArgument,
                    "invalid_requested_by",
                    "requested_by must be a user id or ops",
                ));
            }
        };
        let revoked = self
            .store
            .revoke_user_sessions(&req.user_id, &req.reason, requested_by)
            .await
            .map_err(internal)?;
        tracing::info!(user_id = %req.user_id, reason = %req.reason, revoked, "sessions of a user revoked");
        Ok(Response::new(RevokeUserSessionsReply {
            revoked: u32::try_from(revoked).unwrap_or(u32::MAX),
        }))
    }

    async fn change_email(
        &self,
        request: Request<ChangeEmailRequest>,
    ) -> Result<Response<ChangeEmailReply>, Status> {
        let client_ip = metadata_text(&request, "x-client-ip");
        let req = request.into_inner();
        let account = self
            .account_with_password(&req.user_id, req.password, &client_ip)
            .await?;
        let email = email::normalize(&req.new_email).map_err(|e| {
            status(
                tonic::Code::InvalidArgument,
                "invalid_email",
                &e.to_string(),
            )
        })?;
        if email != account.email
            && !self
                .store
                .set_email(&account.user_id, &email)
                .await
                .map_err(internal)?
        {
            return Err(status(
                tonic::Code::AlreadyExists,
                "email_taken",
                "an account with this email exists",
            ));
        }
        tracing::info!(user_id = %account.user_id, "email changed");
        Ok(Response::new(ChangeEmailReply { email }))
    }
}
