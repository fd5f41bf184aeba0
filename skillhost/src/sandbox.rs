//! The sandbox one skill call runs in: a fresh store and instance per
//! call, WASI preview 2 with nothing granted unless the skill's namespace
//! grants it, and per-call limits on CPU time, memory and the number of
//! instances alive at once.
//!
//! CPU time is counted in epochs: a thread advances the engine's epoch
//! every [`TICK`], and each epoch a running guest crosses costs it one
//! tick; time spent waiting on CSI calls is not counted. At every tick the
//! guest yields to the async executor, so a cancelled call stops there.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::bindings::exports::pharia::skill::skill_handler;
use crate::bindings::{Skill, SkillPre};
use crate::csi::Csi;
use crate::error::{CsiError, SkillError};
use crate::grants::Grants;

/// How often the epoch advances: the granularity of the CPU time limit.
pub const TICK: Duration = Duration::from_millis(10);

/// How long a call waits for a free instance before it is refused.
const INSTANCE_WAIT: Duration = Duration::from_secs(10);

/// Per-call limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Guest CPU time per call (default 60 s).
    pub cpu_time: Duration,
    /// Linear memory per instance, in bytes (default 256 MiB).
    pub memory_bytes: usize,
    /// Instances alive at once, over all skills (default 16).
    pub instances: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            cpu_time: Duration::from_secs(60),
            memory_bytes: 256 << 20,
            instances: 16,
        }
    }
}

/// What a store holds for one call.
pub struct StoreState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) csi: Arc<Csi>,
    memory: MemoryCap,
    /// Ticks of guest execution left.
    ticks_left: u64,
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The memory limit: a growth past it traps with [`MemoryLimit`].
struct MemoryCap {
    bytes: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("the skill used more than its memory limit of {} MiB and was stopped", .0 >> 20)]
struct MemoryLimit(usize);

#[derive(Debug, thiserror::Error)]
#[error("the skill ran past its CPU time limit of {0:?} and was stopped")]
struct TimeLimit(Duration);

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.bytes {
            return Err(wasmtime::Error::new(MemoryLimit(self.bytes)));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _: usize,
        desired: usize,
        _: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

/// The engine, the linker with WASI and the CSI, and the limits: shared by
/// every skill.
pub struct Sandbox {
    pub(crate) engine: Engine,
    pub(crate) linker: Linker<StoreState>,
    limits: Limits,
    instances: Arc<Semaphore>,
    ticker_stop: Arc<AtomicBool>,
}

impl Sandbox {
    /// A sandbox with `limits`; starts the epoch thread.
    ///
    /// # Errors
    /// When the engine cannot be configured on this machine.
    pub fn new(limits: Limits) -> anyhow::Result<Sandbox> {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        Skill::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (ticking, stop) = (engine.clone(), Arc::clone(&ticker_stop));
        std::thread::Builder::new()
            .name("skill-epochs".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    ticking.increment_epoch();
                }
            })?;
        Ok(Sandbox {
            engine,
            linker,
            limits,
            instances: Arc::new(Semaphore::new(limits.instances.max(1))),
            ticker_stop,
        })
    }

    /// Calls the skill's `run` with `input`; its output bytes.
    ///
    /// # Errors
    /// [`SkillError`] for the skill's own errors (`InvalidInput`, `Skill`),
    /// a trap, a limit, a CSI failure, or `cancel`.
    pub async fn run(
        &self,
        pre: &SkillPre<StoreState>,
        csi: Arc<Csi>,
        grants: &Grants,
        input: Vec<u8>,
        cancel: &CancellationToken,
    ) -> Result<Vec<u8>, SkillError> {
        let (mut store, _permit) = self.store(csi, grants).await?;
        let call = async {
            let skill = pre.instantiate_async(&mut store).await?;
            skill
                .pharia_skill_skill_handler()
                .call_run(&mut store, &input)
                .await
        };
        let output = tokio::select! {
            result = call => result.map_err(|e| self.failure(e))?,
            () = cancel.cancelled() => return Err(SkillError::Cancelled("the run was cancelled".into())),
        };
        output.map_err(|e| match e {
            skill_handler::Error::InvalidInput(m) => SkillError::InvalidInput(m),
            skill_handler::Error::Internal(m) => SkillError::Skill(m),
        })
    }

    /// Calls the skill's `metadata`.
    ///
    /// # Errors
    /// As [`Sandbox::run`].
    pub async fn metadata(
        &self,
        pre: &SkillPre<StoreState>,
        csi: Arc<Csi>,
        grants: &Grants,
    ) -> Result<skill_handler::SkillMetadata, SkillError> {
        let (mut store, _permit) = self.store(csi, grants).await?;
        let skill = pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| self.failure(e))?;
        skill
            .pharia_skill_skill_handler()
            .call_metadata(&mut store)
            .await
            .map_err(|e| self.failure(e))
    }

    /// A fresh store under the limits, once an instance is free.
    async fn store(
        &self,
        csi: Arc<Csi>,
        grants: &Grants,
    ) -> Result<(Store<StoreState>, tokio::sync::OwnedSemaphorePermit), SkillError> {
        let permit =
            tokio::time::timeout(INSTANCE_WAIT, Arc::clone(&self.instances).acquire_owned())
                .await
                .map_err(|_| {
                    SkillError::Limit(format!(
                        "all {} skill instances stayed busy for {INSTANCE_WAIT:?}; try again later",
                        self.limits.instances
                    ))
                })?
                .expect("the semaphore is never closed");
        let mut wasi = WasiCtxBuilder::new();
        for dir in &grants.dirs {
            let perms = if dir.writable {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| {
                    SkillError::Broken(format!(
                        "the namespace grants {}, which cannot be opened: {e}",
                        dir.host.display()
                    ))
                })?;
        }
        if grants.network {
            wasi.inherit_network().allow_ip_name_lookup(true);
        }
        let ticks = (self.limits.cpu_time.as_millis() / TICK.as_millis()).max(1) as u64;
        let mut store = Store::new(
            &self.engine,
            StoreState {
                wasi: wasi.build(),
                table: ResourceTable::new(),
                csi,
                memory: MemoryCap {
                    bytes: self.limits.memory_bytes,
                },
                ticks_left: ticks,
            },
        );
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(1);
        let limit = self.limits.cpu_time;
        store.epoch_deadline_callback(move |mut ctx| {
            let state = ctx.data_mut();
            state.ticks_left = state.ticks_left.saturating_sub(1);
            if state.ticks_left == 0 {
                return Err(wasmtime::Error::new(TimeLimit(limit)));
            }
            Ok(UpdateDeadline::Yield(1))
        });
        Ok((store, permit))
    }

    /// The [`SkillError`] for a failed call.
    fn failure(&self, error: wasmtime::Error) -> SkillError {
        if let Some(limit) = error.downcast_ref::<TimeLimit>() {
            return SkillError::Limit(limit.to_string());
        }
        if let Some(limit) = error.downcast_ref::<MemoryLimit>() {
            return SkillError::Limit(limit.to_string());
        }
        if let Some(csi) = error.downcast_ref::<CsiError>() {
            return csi.clone().into();
        }
        if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            return SkillError::Trapped(format!("the skill trapped: {trap}"));
        }
        SkillError::Trapped(format!("the skill failed: {error:#}"))
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
