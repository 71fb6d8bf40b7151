//! A whole virtual machine: guest memory, the KVM VM, vCPUs and devices, put together from a
//! [`MachineConfig`], booted or restored (its [`MachineState`] is the composition of its
//! components' [`Persist`] states), and run on one thread per vCPU.

use crate::acpi::{self, AcpiError};
use crate::boot::{self, BootError};
use crate::config::{MachineConfig, SerialTarget};
use crate::control::{self, ExitReason, RunControl};
use crate::devices::cmos::Cmos;
use crate::devices::i8042::I8042;
use crate::devices::serial::{ConsoleOut, SerialDevice, SerialError};
use crate::devices::virtio::{DeviceManager, ManagerError};
use crate::devices::{Bus, BusError};
use crate::kvm::cpuid;
use crate::kvm::regs;
use crate::kvm::vm::{KvmVm, VmError};
use crate::layout;
use crate::memory::{self, GuestMem, MemoryError};
use crate::persist::Persist;
use crate::state::{MachineState, StateError};
use crate::vcpu::{self, Vcpu, VcpuEnv, VcpuError};
use kvm_bindings::CpuId;
use parking_lot::Mutex;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use thiserror::Error;
use vmm_sys_util::eventfd::EventFd;

/// Errors building or starting a machine.
#[derive(Debug, Error)]
pub enum MachineError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// KVM VM setup.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// Serial console.
    #[error(transparent)]
    Serial(#[from] SerialError),
    /// Device bus registration.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// virtio devices.
    #[error(transparent)]
    Devices(#[from] ManagerError),
    /// ACPI tables.
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    /// No kernel given for a fresh boot.
    #[error("--kernel is required unless --restore or --incoming is given")]
    NoKernel,
    /// Reading KVM's CPUID.
    #[error("cannot read KVM's supported CPUID: {0}")]
    Cpuid(kvm_ioctls::Error),
    /// Registering an irqfd or creating an eventfd.
    #[error("cannot wire interrupt for {what}: {source}")]
    Irq {
        /// Which device.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Installing the vCPU kick signal handler.
    #[error("cannot install vCPU signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    /// Spawning a thread.
    #[error("cannot spawn {what} thread: {source}")]
    Thread {
        /// Which thread.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

/// A running or runnable VM.
pub struct Machine {
    /// The configuration it was built from.
    config: MachineConfig,
    /// Guest RAM.
    mem: GuestMem,
    /// The KVM VM.
    vm: KvmVm,
    /// KVM's supported CPUID (before per-vCPU normalisation).
    cpuid: CpuId,
    /// vCPUs.
    vcpus: Vec<Arc<Vcpu>>,
    /// The serial console.
    serial: Arc<Mutex<SerialDevice>>,
    /// Buses and run control shared with the vCPU threads.
    env: Arc<VcpuEnv>,
    /// The virtio devices and their device thread.
    devices: DeviceManager,
    /// The guest's dirty rate (pages/s) as the latest migration round measured it; 0 before
    /// any migration (dirty logging is off otherwise: it costs the guest a fault per page).
    dirty_pages_per_sec: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Machine {
    /// Builds memory, VM, vCPUs (with CPUID) and devices; loads nothing.
    pub fn new(config: MachineConfig) -> Result<Arc<Self>, MachineError> {
        config.validate()?;
        let mem = memory::create(config.memory)?;
        let vm = KvmVm::new(&mem)?;
        let base = cpuid::supported(vm.kvm()).map_err(MachineError::Cpuid)?;
        let vcpus = (0..config.vcpus)
            .map(|i| {
                Vcpu::new(vm.fd(), &base, vm.saved_msrs().clone(), i, config.vcpus).map(Arc::new)
            })
            .collect::<Result<Vec<_>, _>>()?;

        let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| MachineError::Irq {
            what: "serial",
            source,
        })?;
        vm.fd()
            .register_irqfd(&irq_evt, layout::SERIAL_IRQ)
            .map_err(|e| MachineError::Irq {
                what: "serial",
                source: std::io::Error::from_raw_os_error(e.errno()),
            })?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            irq_evt,
            ConsoleOut::open(&config.serial)?,
        )));
        let mut pio = Bus::new();
        pio.insert(0x3f8, 8, serial.clone())?;
        // Data port 0x60 is offset 0, command/status 0x64 offset 4 (0x61 is the PIT's, in KVM).
        pio.insert(0x60, 5, Arc::new(Mutex::new(I8042::default())))?;
        pio.insert(0x70, 2, Arc::new(Mutex::new(Cmos::default())))?;
        let devices = DeviceManager::new(vm.fd(), &mem, &config.disks, &config.nets)?;
        let mut mmio = Bus::new();
        devices.register(&mut mmio)?;
        mmio.insert(
            acpi::pm::PM_START,
            acpi::pm::PM_SIZE,
            Arc::new(Mutex::new(acpi::pm::AcpiPm)),
        )?;
        let env = Arc::new(VcpuEnv {
            pio,
            mmio,
            control: Arc::new(RunControl::default()),
        });
        Ok(Arc::new(Machine {
            config,
            mem,
            vm,
            cpuid: base,
            vcpus,
            serial,
            env,
            devices,
            dirty_pages_per_sec: AtomicU64::new(0),
            threads: Mutex::new(Vec::new()),
        }))
    }

    /// Loads the kernel, initrd and command line and sets the vCPUs up for the 64-bit entry.
    pub fn boot(&self) -> Result<(), MachineError> {
        let kernel = self.config.kernel.as_ref().ok_or(MachineError::NoKernel)?;
        let (loaded, hdr) = boot::load_kernel(&self.mem, kernel)?;
        let cmdline = boot::make_cmdline(&self.config.cmdline)?;
        let initrd = match &self.config.initrd {
            Some(p) => Some(boot::load_initrd(
                &self.mem,
                p,
                loaded.end,
                boot::initrd_limit(hdr.as_ref()),
            )?),
            None => None,
        };
        boot::write_boot_params(&self.mem, self.config.memory, &cmdline, hdr, initrd)?;
        regs::write_boot_tables(&self.mem).map_err(BootError::from)?;
        acpi::write_tables(&self.mem, self.config.vcpus, self.devices.devices())?;
        for v in &self.vcpus {
            v.setup_boot(loaded.entry)?;
        }
        Ok(())
    }

    /// Starts one thread per vCPU (and a stdin reader when the console is a terminal).
    pub fn start(self: &Arc<Self>) -> Result<(), MachineError> {
        control::install_kick_handler().map_err(MachineError::Signal)?;
        self.vm.wait_memory()?;
        let mut threads = self.threads.lock();
        for v in &self.vcpus {
            let v = v.clone();
            let env = self.env.clone();
            let h = std::thread::Builder::new()
                .name(format!("vcpu{}", v.id()))
                .stack_size(256 << 10)
                .spawn(move || vcpu::run_loop(&v, &env))
                .map_err(|source| MachineError::Thread {
                    what: "vCPU",
                    source,
                })?;
            threads.push(h);
        }
        // SAFETY: isatty only inspects the file descriptor.
        if self.config.serial == SerialTarget::Stdout && unsafe { libc::isatty(0) } == 1 {
            let serial = self.serial.clone();
            std::thread::Builder::new()
                .name("stdin".into())
                .spawn(move || {
                    crate::sandbox::install_or_exit(crate::sandbox::ThreadKind::Device);
                    forward_stdin(serial)
                })
                .map_err(|source| MachineError::Thread {
                    what: "stdin",
                    source,
                })?;
        }
        Ok(())
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &MachineConfig {
        &self.config
    }

    /// Guest RAM.
    pub fn mem(&self) -> &GuestMem {
        &self.mem
    }

    /// The disks, in `--disk` order, as live migration reads and writes them.
    pub fn disks(&self) -> &[crate::devices::virtio::DiskHandle] {
        self.devices.disks()
    }

    /// The KVM VM (memory slots, dirty log).
    pub fn vm(&self) -> &KvmVm {
        &self.vm
    }

    /// KVM's supported CPUID (before per-vCPU normalisation).
    pub fn cpuid(&self) -> &CpuId {
        &self.cpuid
    }

    /// The guest's dirty rate (pages/s) as the latest migration round measured it; 0 before
    /// any migration.
    pub fn dirty_pages_per_sec(&self) -> u64 {
        self.dirty_pages_per_sec.load(Ordering::Relaxed)
    }

    /// Records the dirty rate a migration round measured.
    pub fn set_dirty_pages_per_sec(&self, rate: u64) {
        self.dirty_pages_per_sec.store(rate, Ordering::Relaxed);
    }

    /// Narrows the list of MSRs saved with each vCPU (once per machine) so a later save,
    /// inside migration downtime, does not. Briefly pauses the vCPUs if they are running.
    pub fn prepare_state(&self) -> Result<(), StateError> {
        let Some(v) = self.vcpus.first() else {
            return Ok(());
        };
        if self.vm.saved_msrs().is_probed() {
            return Ok(());
        }
        let was_paused = self.control().is_paused();
        if !was_paused {
            self.control().pause();
        }
        let probed = v.probe_msrs();
        if !was_paused {
            self.control().resume();
        }
        Ok(probed?)
    }

    /// Pauses the vCPUs, then the virtio device thread: from return until
    /// [`Machine::resume_all`] nothing writes guest memory.
    pub fn pause_all(&self) {
        self.control().pause();
        self.devices.pause();
    }

    /// Undoes [`Machine::pause_all`].
    pub fn resume_all(&self) {
        self.devices.resume();
        self.control().resume();
    }

    /// Run control (pause, resume, exit).
    pub fn control(&self) -> &Arc<RunControl> {
        &self.env.control
    }

    /// Blocks until the VM ends; flushes the console; returns why it ended.
    pub fn wait(&self) -> ExitReason {
        let reason = self.control().wait_exit();
        if let Err(e) = self.serial.lock().flush() {
            tracing::warn!("serial console: cannot flush output: {e}");
        }
        reason
    }
}

impl Persist for Machine {
    type State = MachineState;
    type Error = StateError;

    /// Captures the whole machine; call with the vCPUs and the devices paused (see
    /// [`Machine::pause_all`]).
    fn save(&self) -> Result<MachineState, StateError> {
        Ok(MachineState {
            memory: self.config.memory,
            vcpus: self
                .vcpus
                .iter()
                .map(|v| v.save())
                .collect::<Result<_, _>>()?,
            vm: self.vm.save()?,
            serial: self.serial.save()?,
            devices: self.devices.save()?,
        })
    }

    /// Restores a state into this freshly built, not yet started machine of the same shape:
    /// VM-wide devices, then every vCPU, the serial port and the virtio devices.
    fn restore(&self, s: &MachineState) -> Result<(), StateError> {
        if s.memory != self.config.memory || s.vcpus.len() != self.vcpus.len() {
            return Err(StateError::Mismatch(format!(
                "state has {} MiB and {} vCPUs, machine has {} MiB and {} vCPUs",
                s.memory >> 20,
                s.vcpus.len(),
                self.config.memory >> 20,
                self.vcpus.len()
            )));
        }
        self.vm.restore(&s.vm)?;
        for (v, vs) in self.vcpus.iter().zip(&s.vcpus) {
            v.restore(vs)?;
        }
        self.serial.restore(&s.serial)?;
        self.devices.restore(&s.devices)?;
        Ok(())
    }
}

fn forward_stdin(serial: Arc<Mutex<SerialDevice>>) {
    let mut buf = [0u8; 64];
    let mut stdin = std::io::stdin();
    while let Ok(n) = stdin.read(&mut buf) {
        if n == 0 {
            break;
        }
        let mut pending = &buf[..n];
        while !pending.is_empty() {
            let took = serial.lock().enqueue_input(pending);
            pending = &pending[took..];
            if took == 0 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}
