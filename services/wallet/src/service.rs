//! The `trustmesh.wallet.v1.Wallet` gRPC service. The policy layer has
//! already decided who may call what (`policies/wallet/wallet.rego`);
//! handlers validate the request, call the [`WalletStore`] and map its
//! outcome to a reply or a status.
//!
//! One decision needs a fact the policy layer cannot know: an agent's
//! deposit volume of the last 24 h. `Deposit` therefore evaluates the wallet
//! policy a second time, inside the posting's transaction (after the agent's
//! clearing account is locked, so concurrent deposits cannot both slip under
//! the limit), with that volume added to the request as `agent_volume_24h`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tonic::{Request, Response, Status};
use trustmesh_identity::PeerIdentity;
use trustmesh_policy::{
    DenyHook, Peer, PolicyEngine, PolicyInput, REQUEST_ID_HEADER, RequestContext, deny_status,
};
use trustmesh_proto::trustmesh::wallet::v1::wallet_server::Wallet;
use trustmesh_proto::trustmesh::wallet::v1::{
    Balance, DepositReply, DepositRequest, GetBalanceReply, GetBalanceRequest,
    GetOutgoingVolumeReply, GetOutgoingVolumeRequest, ListTransactionsReply,
    ListTransactionsRequest, Transaction, TransferRecord as TransferRecordMsg, TransferReply,
    TransferRequest,
};
use trustmesh_store::StoreError;

use crate::ledger::{
    HistoryEntry, LedgerError, NewDeposit, NewTransfer, Posted, TransferKind, TransferRecord,
    valid_currency,
};
use crate::store::WalletStore;

/// The most entries one `ListTransactions` page returns.
pub const MAX_PAGE: u32 = 200;
/// The page size when the request gives none.
pub const DEFAULT_PAGE: u32 = 50;
/// The full gRPC path of `Deposit` (the input of its second decision).
pub const DEPOSIT_RPC: &str = "/trustmesh.wallet.v1.Wallet/Deposit";
/// The request field carrying the agent's 24 h deposit volume in the
/// second `Deposit` decision (not a proto field: only the handler sets it).
pub const AGENT_VOLUME_FIELD: &str = "agent_volume_24h";
/// The prefix of page tokens (versioned, so the format can change).
const PAGE_TOKEN_PREFIX: &str = "e1:";

/// The wallet service.
#[derive(Clone)]
pub struct WalletService {
    store: WalletStore,
    policy: PolicyEngine,
    deny_hook: Option<DenyHook>,
}

impl std::fmt::Debug for WalletService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalletService")
            .field("store", &self.store)
            .field("deny_hook", &self.deny_hook.is_some())
            .finish_non_exhaustive()
    }
}

impl WalletService {
    /// A service over `store`; `policy` (the same engine the runtime's
    /// policy layer uses) decides deposits a second time with the agent's
    /// 24 h volume.
    pub fn new(store: WalletStore, policy: PolicyEngine) -> Self {
        Self {
            store,
            policy,
            deny_hook: None,
        }
    }

    /// Runs `hook` on every deny of the second `Deposit` decision (the
    /// daily limit), like `PolicyLayer::with_deny_hook` for the first: the
    /// audit trail hooks in here.
    pub fn with_deny_hook(mut self, hook: DenyHook) -> Self {
        self.deny_hook = Some(hook);
        self
    }

    /// The store.
    pub fn store(&self) -> &WalletStore {
        &self.store
    }

    /// The second `Deposit` decision: the wallet policy with the agent's
    /// volume of the last 24 h in `request.agent_volume_24h`.
    fn authorize_deposit(
        &self,
        deposit: &NewDeposit,
        volume: i64,
        context: &RequestContext,
    ) -> Result<(), LedgerError> {
        let input = PolicyInput {
            service: "wallet".to_owned(),
            method: "Deposit".to_owned(),
            rpc: DEPOSIT_RPC.to_owned(),
            peer: Peer {
                spiffe_id: Some(deposit.agent.clone()),
                workload: self.policy.workload_for(&deposit.agent),
            },
            subject: None,
            request: serde_json::json!({
                "to_user_id": deposit.to_user,
                "amount": deposit.amount,
                "currency": deposit.currency,
                "reference": deposit.reference,
                AGENT_VOLUME_FIELD: volume,
            }),
            context: context.clone(),
        };
        match self.policy.authorize(&input) {
            Ok(decision) if decision.allow => Ok(()),
            Ok(decision) => {
                tracing::info!(
                    service = "wallet",
                    rpc = DEPOSIT_RPC,
                    peer = %deposit.agent,
                    reason = %decision.reason,
                    volume,
                    amount = deposit.amount,
                    currency = %deposit.currency,
                    request_id = %context.request_id,
                    "policy denied (deposit volume)"
                );
                if let Some(hook) = &self.deny_hook {
                    hook(&input, &decision);
                }
                Err(LedgerError::Refused(decision.reason))
            }
            Err(e) => {
                tracing::error!(error = %e, rpc = DEPOSIT_RPC, "policy evaluation failed");
                Err(LedgerError::PolicyFailed)
            }
        }
    }
}

/// The status for a ledger error.
pub fn ledger_status(e: LedgerError) -> Status {
    match e {
        LedgerError::Invalid(message) => Status::invalid_argument(message),
        e @ LedgerError::Overflow => Status::invalid_argument(e.to_string()),
        e @ (LedgerError::InsufficientFunds | LedgerError::LimitExceeded) => {
            Status::failed_precondition(e.to_string())
        }
        e @ LedgerError::Conflict => Status::already_exists(e.to_string()),
        // Logged where it happened.
        LedgerError::PolicyFailed => Status::internal("authorization failed"),
        LedgerError::Refused(reason) => deny_status(&reason),
        LedgerError::Store(e) => internal(e),
    }
}

fn internal(e: StoreError) -> Status {
    trustmesh_runtime::store_status("wallet", &e)
}

/// `value` as a canonical (lowercase, hyphenated) UUID.
fn canonical_uuid(field: &str, value: &str) -> Result<String, Status> {
    uuid::Uuid::parse_str(value)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| Status::invalid_argument(format!("{field} must be a UUID")))
}

fn currency(value: &str) -> Result<String, Status> {
    if valid_currency(value) {
        Ok(value.to_owned())
    } else {
        Err(Status::invalid_argument(
            "currency must be three uppercase letters (ISO 4217, e.g. EUR)",
        ))
    }
}

/// The opaque token naming the page after `entry_id`.
pub fn page_token(entry_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{PAGE_TOKEN_PREFIX}{entry_id}"))
}

/// The entry id a page token continues after.
pub fn parse_page_token(token: &str) -> Result<String, Status> {
    let bad = || Status::invalid_argument("page_token is not a token this service issued");
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let id = text.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(bad)?;
    uuid::Uuid::parse_str(id).map_err(|_| bad())?;
    Ok(id.to_owned())
}

fn record_msg(r: TransferRecord) -> TransferRecordMsg {
    TransferRecordMsg {
        transfer_id: r.transfer_id,
        kind: r.kind.as_str().to_owned(),
        from_user_id: r.from_user.unwrap_or_default(),
        to_user_id: r.to_user,
        agent_id: r.agent.unwrap_or_default(),
        amount: r.amount,
        currency: r.currency,
        reference: r.reference,
        created_at: r.created_at,
    }
}

fn transaction_msg(e: HistoryEntry) -> Transaction {
    Transaction {
        transfer_id: e.transfer_id,
        kind: e.kind.as_str().to_owned(),
        currency: e.currency,
        amount: e.amount,
        balance_after: e.balance_after,
        counterparty: e.counterparty,
        reference: e.reference,
        created_at: e.created_at,
    }
}

/// The context of the second decision, from the call's metadata (the
/// policy layer set `x-request-id` if the caller did not).
fn context_of<T>(request: &Request<T>) -> RequestContext {
    let mut context = RequestContext::now();
    let text = |name: &str| {
        request
            .metadata()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    if let Some(id) = text(REQUEST_ID_HEADER) {
        context.request_id = id;
    }
    context.client_ip = text("x-client-ip");
    context.user_agent = text("x-client-user-agent").or_else(|| text("user-agent"));
    context
}

#[tonic::async_trait]
impl Wallet for WalletService {
    async fn get_balance(
        &self,
        request: Request<GetBalanceRequest>,
    ) -> Result<Response<GetBalanceReply>, Status> {
        let user_id = canonical_uuid("user_id", &request.get_ref().user_id)?;
        let balances = self.store.balances(&user_id).await.map_err(internal)?;
        Ok(Response::new(GetBalanceReply {
            user_id,
            balances: balances
                .into_iter()
                .map(|(currency, amount)| Balance { currency, amount })
                .collect(),
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<ListTransactionsRequest>,
    ) -> Result<Response<ListTransactionsReply>, Status> {
        let req = request.into_inner();
        let user_id = canonical_uuid("user_id", &req.user_id)?;
        let size = match req.page_size {
            0 => DEFAULT_PAGE,
            n => n.min(MAX_PAGE),
        };
        let before = match req.page_token.as_str() {
            "" => None,
            token => Some(parse_page_token(token)?),
        };
        // One more than asked: whether there is a next page.
        let mut entries = self
            .store
            .history(&user_id, before.as_deref(), size + 1)
            .await
            .map_err(internal)?;
        let next_page_token = if entries.len() > size as usize {
            entries.truncate(size as usize);
            entries
                .last()
                .map(|e| page_token(&e.entry_id))
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListTransactionsReply {
            transactions: entries.into_iter().map(transaction_msg).collect(),
            next_page_token,
        }))
    }

    async fn transfer(
        &self,
        request: Request<TransferRequest>,
    ) -> Result<Response<TransferReply>, Status> {
        let req = request.into_inner();
        let kind = match req.kind.as_str() {
            "payment" => TransferKind::Payment,
            "rollback" => TransferKind::Rollback,
            _ => return Err(Status::invalid_argument("kind must be payment or rollback")),
        };
        let transfer = NewTransfer {
            transfer_id: canonical_uuid("transfer_id", &req.transfer_id)?,
            from_user: canonical_uuid("from_user_id", &req.from_user_id)?,
            to_user: canonical_uuid("to_user_id", &req.to_user_id)?,
            amount: req.amount,
            currency: req.currency,
            kind,
            reference: req.reference,
            outgoing_limit_24h: (req.outgoing_limit_24h != 0).then_some(req.outgoing_limit_24h),
        };
        let Posted { record, replayed } = self
            .store
            .transfer(&transfer)
            .await
            .map_err(ledger_status)?;
        if !replayed {
            tracing::info!(
                transfer_id = %record.transfer_id,
                kind = record.kind.as_str(),
                amount = record.amount,
                currency = %record.currency,
                "transfer posted"
            );
        }
        Ok(Response::new(TransferReply {
            transfer: Some(record_msg(record)),
            replayed,
        }))
    }

    async fn deposit(
        &self,
        request: Request<DepositRequest>,
    ) -> Result<Response<DepositReply>, Status> {
        let agent = request
            .extensions()
            .get::<PeerIdentity>()
            .and_then(|p| p.spiffe_id.as_deref())
            .map(str::to_owned)
            .ok_or_else(|| Status::unauthenticated("the caller presented no SPIFFE ID"))?;
        let context = context_of(&request);
        let req = request.into_inner();
        let deposit = NewDeposit {
            agent,
            to_user: canonical_uuid("to_user_id", &req.to_user_id)?,
            amount: req.amount,
            currency: req.currency,
            reference: req.reference,
        };
        let Posted { record, replayed } = self
            .store
            .deposit(&deposit, {
                // Runs in the store's writer, after this call's own future:
                // it owns what it needs.
                let (service, deposit, context) = (self.clone(), deposit.clone(), context.clone());
                move |volume| service.authorize_deposit(&deposit, volume, &context)
            })
            .await
            .map_err(ledger_status)?;
        if !replayed {
            tracing::info!(
                transfer_id = %record.transfer_id,
                agent = %deposit.agent,
                amount = record.amount,
                currency = %record.currency,
                "deposit posted"
            );
        }
        Ok(Response::new(DepositReply {
            transfer: Some(record_msg(record)),
            replayed,
        }))
    }

    async fn get_outgoing_volume(
        &self,
        request: Request<GetOutgoingVolumeRequest>,
    ) -> Result<Response<GetOutgoingVolumeReply>, Status> {
        let req = request.into_inner();
        let user_id = canonical_uuid("user_id", &req.user_id)?;
        let currency = currency(&req.currency)?;
        let (volume, since) = self
            .store
            .outgoing_volume(&user_id, &currency, TransferKind::Payment)
            .await
            .map_err(internal)?;
        Ok(Response::new(GetOutgoingVolumeReply { volume, since }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let id = uuid::Uuid::now_v7().to_string();
        assert_eq!(parse_page_token(&page_token(&id)).ok(), Some(id.clone()));
        for bad in ["", "!!", "ZTE6eA", &URL_SAFE_NO_PAD.encode(&id)] {
            assert_eq!(
                parse_page_token(bad).map_err(|s| s.code()),
                Err(tonic::Code::InvalidArgument),
                "{bad}"
            );
        }
    }

    #[test]
    fn ledger_errors_map_to_codes() {
        use tonic::Code;
        let cases = [
            (LedgerError::Invalid("x".into()), Code::InvalidArgument),
            (LedgerError::Overflow, Code::InvalidArgument),
            (LedgerError::InsufficientFunds, Code::FailedPrecondition),
            (LedgerError::LimitExceeded, Code::FailedPrecondition),
            (LedgerError::Conflict, Code::AlreadyExists),
            (
                LedgerError::Refused("daily_limit_exceeded".into()),
                Code::PermissionDenied,
            ),
            (LedgerError::PolicyFailed, Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(ledger_status(e).code(), code);
        }
        let status = ledger_status(LedgerError::InsufficientFunds);
        assert!(status.message().starts_with("insufficient_funds"));
    }

    #[test]
    fn uuids_are_canonicalised() {
        let u = uuid::Uuid::new_v4();
        let upper = u.hyphenated().to_string().to_uppercase();
        assert_eq!(canonical_uuid("x", &upper).ok(), Some(u.to_string()));
        assert!(canonical_uuid("x", "nope").is_err());
    }
}
