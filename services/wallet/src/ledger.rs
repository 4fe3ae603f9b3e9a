//! The ledger's domain: what a transfer and a deposit are, how they are
//! validated, what posting one can result in, and the errors it can fail
//! with. Storage lives in [`crate::store`]; the gRPC mapping in
//! [`crate::service`].

use trustmesh_store::StoreError;

/// The longest reference (payment id, agent reference) accepted, in characters.
pub const MAX_REFERENCE: usize = 200;

/// The rolling window of the outgoing-volume and daily-deposit limits.
pub const VOLUME_WINDOW: time::Duration = time::Duration::hours(24);

/// What kind of movement a transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransferKind {
    /// A payment between two users (payment service).
    Payment,
    /// A compensating transfer undoing a payment (payment service, finance).
    Rollback,
    /// Money brought in by an agent from its clearing account.
    Deposit,
}

impl TransferKind {
    /// `payment`, `rollback` or `deposit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Payment => "payment",
            Self::Rollback => "rollback",
            Self::Deposit => "deposit",
        }
    }

    /// Whether a transfer of this kind counts toward its sender's rolling
    /// 24 h volume: a user's payments and an agent's deposits do,
    /// rollbacks never.
    pub fn counts_toward_volume(self) -> bool {
        self.volume_of().is_some()
    }

    /// The kind of account whose rolling 24 h volume a transfer of this
    /// kind counts toward (the inverse of [`AccountKind::counted_kind`]);
    /// `None` for rollbacks.
    pub fn volume_of(self) -> Option<AccountKind> {
        match self {
            Self::Payment => Some(AccountKind::User),
            Self::Deposit => Some(AccountKind::Agent),
            Self::Rollback => None,
        }
    }

    /// The kind named `s` (as stored).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "payment" => Some(Self::Payment),
            "rollback" => Some(Self::Rollback),
            "deposit" => Some(Self::Deposit),
            _ => None,
        }
    }
}

/// Who owns an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccountKind {
    /// An agent's clearing account (owner: the agent's SPIFFE ID); may be negative.
    Agent,
    /// A user's wallet (owner: the user id); never negative.
    User,
}

impl AccountKind {
    /// The kind of transfer from such an account that counts toward its
    /// rolling 24 h volume: a user's payments, an agent's deposits.
    pub fn counted_kind(self) -> TransferKind {
        match self {
            Self::User => TransferKind::Payment,
            Self::Agent => TransferKind::Deposit,
        }
    }

    /// `agent` or `user`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::User => "user",
        }
    }

    /// The kind named `s` (as stored).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "agent" => Some(Self::Agent),
            "user" => Some(Self::User),
            _ => None,
        }
    }
}

/// A transfer between two users, as the payment service asks for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTransfer {
    /// The caller's idempotency key (a UUID).
    pub transfer_id: String,
    /// The paying user (UUID).
    pub from_user: String,
    /// The receiving user (UUID).
    pub to_user: String,
    /// Minor units, > 0.
    pub amount: i64,
    /// Three uppercase letters.
    pub currency: String,
    /// [`TransferKind::Payment`] or [`TransferKind::Rollback`].
    pub kind: TransferKind,
    /// The caller's reference (e.g. the payment id); may be empty.
    pub reference: String,
    /// Refuse with [`LedgerError::LimitExceeded`] if the sender's outgoing
    /// payments of the last 24 h in this currency plus `amount` exceed it.
    pub outgoing_limit_24h: Option<i64>,
}

impl NewTransfer {
    /// Checks every field; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), LedgerError> {
        uuid_field("transfer_id", &self.transfer_id)?;
        uuid_field("from_user_id", &self.from_user)?;
        uuid_field("to_user_id", &self.to_user)?;
        if self.from_user.eq_ignore_ascii_case(&self.to_user) {
            return Err(LedgerError::Invalid(
                "self_transfer: from_user_id and to_user_id are the same user".into(),
            ));
        }
        amount_field(self.amount)?;
        currency_field(&self.currency)?;
        if self.kind == TransferKind::Deposit {
            return Err(LedgerError::Invalid(
                "kind must be payment or rollback (deposits use Deposit)".into(),
            ));
        }
        reference_field(&self.reference, false)?;
        if let Some(limit) = self.outgoing_limit_24h
            && limit <= 0
        {
            return Err(LedgerError::Invalid(
                "outgoing_limit_24h must be positive when set".into(),
            ));
        }
        Ok(())
    }
}

/// A deposit by an agent into a user's wallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewDeposit {
    /// The agent's SPIFFE ID (from its mTLS certificate).
    pub agent: String,
    /// The receiving user (UUID).
    pub to_user: String,
    /// Minor units, > 0.
    pub amount: i64,
    /// Three uppercase letters.
    pub currency: String,
    /// The agent's external reference: the idempotency key, 1 to 200 characters.
    pub reference: String,
}

impl NewDeposit {
    /// Checks every field; the error says which one is wrong.
    pub fn validate(&self) -> Result<(), LedgerError> {
        if !self.agent.starts_with("spiffe://") {
            return Err(LedgerError::Invalid(
                "the depositing agent has no SPIFFE ID".into(),
            ));
        }
        uuid_field("to_user_id", &self.to_user)?;
        amount_field(self.amount)?;
        currency_field(&self.currency)?;
        reference_field(&self.reference, true)
    }
}

/// A recorded transfer (any kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferRecord {
    /// The transfer id.
    pub transfer_id: String,
    /// What kind of movement.
    pub kind: TransferKind,
    /// The paying user; `None` for a deposit.
    pub from_user: Option<String>,
    /// The receiving user.
    pub to_user: String,
    /// The depositing agent's SPIFFE ID; `None` unless a deposit.
    pub agent: Option<String>,
    /// Minor units, > 0.
    pub amount: i64,
    /// The currency.
    pub currency: String,
    /// The caller's reference.
    pub reference: String,
    /// When it was recorded (RFC 3339 UTC).
    pub created_at: String,
}

impl TransferRecord {
    /// Whether `t` asks for exactly this transfer (the idempotency check).
    pub fn matches_transfer(&self, t: &NewTransfer) -> bool {
        self.kind == t.kind
            && self.from_user.as_deref() == Some(t.from_user.as_str())
            && self.to_user == t.to_user
            && self.amount == t.amount
            && self.currency == t.currency
            && self.reference == t.reference
    }

    /// Whether `d` asks for exactly this deposit (the idempotency check).
    pub fn matches_deposit(&self, d: &NewDeposit) -> bool {
        self.kind == TransferKind::Deposit
            && self.agent.as_deref() == Some(d.agent.as_str())
            && self.to_user == d.to_user
            && self.amount == d.amount
            && self.currency == d.currency
            && self.reference == d.reference
    }
}

/// The result of posting a transfer or deposit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posted {
    /// The transfer as recorded (the original one on a replay).
    pub record: TransferRecord,
    /// True when the request was a retry answered with the original record.
    pub replayed: bool,
}

/// One entry of a wallet's history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The entry id (UUID v7; the history is ordered by it).
    pub entry_id: String,
    /// The transfer this entry is a leg of.
    pub transfer_id: String,
    /// The transfer's kind.
    pub kind: TransferKind,
    /// The currency.
    pub currency: String,
    /// Signed minor units: positive in, negative out.
    pub amount: i64,
    /// The wallet's balance right after this entry.
    pub balance_after: i64,
    /// The other user, or the agent for a deposit.
    pub counterparty: String,
    /// The transfer's reference.
    pub reference: String,
    /// When it was recorded.
    pub created_at: String,
}

/// Why posting a transfer or deposit failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// A field is invalid (`INVALID_ARGUMENT`); the message names it.
    #[error("{0}")]
    Invalid(String),
    /// The paying wallet does not hold the amount (`FAILED_PRECONDITION`).
    #[error("insufficient_funds: the wallet does not hold the amount")]
    InsufficientFunds,
    /// A balance, or the sender's running total of what it sent (which
    /// the 24 h volumes are read from), would leave the `i64` range
    /// (`INVALID_ARGUMENT`).
    #[error("amount_overflow: the amount would overflow a balance or a running total")]
    Overflow,
    /// The idempotency key was used for a different request (`ALREADY_EXISTS`).
    #[error("idempotency_conflict: this key was used for a different request")]
    Conflict,
    /// The transfer's 24 h outgoing limit would be exceeded (`FAILED_PRECONDITION`).
    #[error("limit_exceeded: the 24 h outgoing limit would be exceeded")]
    LimitExceeded,
    /// The deposit's policy (with the agent's 24 h volume) refused it
    /// (`PERMISSION_DENIED`); the reason code.
    #[error("policy denied: {0}")]
    Refused(String),
    /// The deposit's policy could not be evaluated (`INTERNAL`).
    #[error("the deposit policy could not be evaluated")]
    PolicyFailed,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for LedgerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Query(e))
    }
}

fn uuid_field(field: &str, value: &str) -> Result<(), LedgerError> {
    uuid::Uuid::parse_str(value)
        .map(drop)
        .map_err(|_| LedgerError::Invalid(format!("{field} must be a UUID")))
}

fn amount_field(amount: i64) -> Result<(), LedgerError> {
    if amount <= 0 {
        return Err(LedgerError::Invalid(
            "amount must be a positive number of minor units".into(),
        ));
    }
    Ok(())
}

/// Whether `currency` looks like an ISO 4217 code: three uppercase ASCII letters.
pub fn valid_currency(currency: &str) -> bool {
    currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_uppercase())
}

fn currency_field(currency: &str) -> Result<(), LedgerError> {
    if !valid_currency(currency) {
        return Err(LedgerError::Invalid(
            "currency must be three uppercase letters (ISO 4217, e.g. EUR)".into(),
        ));
    }
    Ok(())
}

fn reference_field(reference: &str, required: bool) -> Result<(), LedgerError> {
    if required && reference.is_empty() {
        return Err(LedgerError::Invalid("reference is required".into()));
    }
    if reference.chars().count() > MAX_REFERENCE {
        return Err(LedgerError::Invalid(format!(
            "reference is longer than {MAX_REFERENCE} characters"
        )));
    }
    if reference.chars().any(char::is_control) {
        return Err(LedgerError::Invalid(
            "reference contains control characters".into(),
        ));
    }
    Ok(())
}

/// `t` as stored in every time column (see [`trustmesh_store::timestamp`]).
pub use trustmesh_store::timestamp;

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer() -> NewTransfer {
        NewTransfer {
            transfer_id: uuid::Uuid::new_v4().to_string(),
            from_user: uuid::Uuid::new_v4().to_string(),
            to_user: uuid::Uuid::new_v4().to_string(),
            amount: 100,
            currency: "EUR".into(),
            kind: TransferKind::Payment,
            reference: "pay-1".into(),
            outgoing_limit_24h: None,
        }
    }

    fn invalid(t: &NewTransfer) -> String {
        match t.validate() {
            Err(LedgerError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn a_good_transfer_validates() {
        assert!(transfer().validate().is_ok());
    }

    #[test]
    fn transfer_fields_are_checked() {
        let mut t = transfer();
        t.to_user = t.from_user.to_uppercase();
        assert!(invalid(&t).starts_with("self_transfer"));
        let mut t = transfer();
        t.amount = 0;
        assert!(invalid(&t).contains("amount"));
        t.amount = -5;
        assert!(invalid(&t).contains("amount"));
        for bad in ["eur", "EURO", "E1R", "", "€UR"] {
            let mut t = transfer();
            t.currency = bad.into();
            assert!(invalid(&t).contains("currency"), "{bad}");
        }
        let mut t = transfer();
        t.transfer_id = "not-a-uuid".into();
        assert!(invalid(&t).contains("transfer_id"));
        let mut t = transfer();
        t.kind = TransferKind::Deposit;
        assert!(invalid(&t).contains("kind"));
        let mut t = transfer();
        t.reference = "x".repeat(MAX_REFERENCE + 1);
        assert!(invalid(&t).contains("reference"));
        t.reference = "a\nb".into();
        assert!(invalid(&t).contains("control"));
        let mut t = transfer();
        t.outgoing_limit_24h = Some(0);
        assert!(invalid(&t).contains("outgoing_limit_24h"));
    }

    #[test]
    fn deposit_needs_agent_and_reference() {
        let d = NewDeposit {
            agent: "spiffe://trustmesh.local/agent/a".into(),
            to_user: uuid::Uuid::new_v4().to_string(),
            amount: 1,
            currency: "USD".into(),
            reference: "ext-1".into(),
        };
        assert!(d.validate().is_ok());
        let mut no_ref = d.clone();
        no_ref.reference.clear();
        assert!(matches!(no_ref.validate(), Err(LedgerError::Invalid(_))));
        let mut no_agent = d;
        no_agent.agent.clear();
        assert!(matches!(no_agent.validate(), Err(LedgerError::Invalid(_))));
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            TransferKind::Payment,
            TransferKind::Rollback,
            TransferKind::Deposit,
        ] {
            assert_eq!(TransferKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(TransferKind::parse("gift"), None);
        assert_eq!(AccountKind::parse("user"), Some(AccountKind::User));
        assert_eq!(AccountKind::parse("agent"), Some(AccountKind::Agent));
        assert_eq!(AccountKind::parse("bank"), None);
    }
}
