//! GPU discovery: is a CUDA driver present, and which devices does it report (name, memory,
//! compute capability, PCI address, NUMA node). Safe to call on machines without a GPU.
//!
//! cudarc (with `dynamic-loading`) panics on the first driver call when libcuda cannot be
//! loaded, so every entry point of this crate asks [`driver_present`] first.

use std::ffi::{CStr, c_char};
use std::path::Path;
use std::sync::OnceLock;

use cudarc::driver::CudaContext;
use cudarc::driver::result::{self, DriverError};
use cudarc::driver::sys::{self, CUdevice_attribute, cudaError_enum};

use crate::error::KernelError;

/// One GPU as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuInfo {
    /// CUDA device ordinal (after `CUDA_VISIBLE_DEVICES`).
    pub index: u32,
    /// Marketing name, e.g. `NVIDIA H100 80GB HBM3`.
    pub name: String,
    /// Total device memory in bytes.
    pub total_bytes: u64,
    /// Free device memory in bytes (0 if no context could be created, e.g. exclusive mode).
    pub free_bytes: u64,
    /// Compute capability `(major, minor)`, e.g. `(9, 0)`.
    pub compute_capability: (u32, u32),
    /// PCI address as the driver prints it, e.g. `0000:1A:00.0`.
    pub pci_bus_id: String,
    /// NUMA node from sysfs; `None` when unknown or the machine has one node (`-1`).
    pub numa_node: Option<i32>,
}

/// True when libcuda can be loaded (probed once per process).
pub fn driver_present() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    // SAFETY: is_culib_present only tries to dlopen libcuda under its known names and closes
    // it again; it touches no CUDA state.
    *PRESENT.get_or_init(|| unsafe { sys::is_culib_present() })
}

/// Initialises the driver; `Ok(false)` when it works but sees no device.
pub(crate) fn init_driver() -> Result<bool, KernelError> {
    if !driver_present() {
        return Err(KernelError::NoDriver);
    }
    match result::init() {
        Ok(()) => Ok(true),
        Err(DriverError(cudaError_enum::CUDA_ERROR_NO_DEVICE)) => Ok(false),
        Err(e) => Err(KernelError::driver("cuInit")(e)),
    }
}

/// Number of devices the driver reports (0 when it sees none).
pub(crate) fn device_count() -> Result<u32, KernelError> {
    if !init_driver()? {
        return Ok(0);
    }
    let n = result::device::get_count().map_err(KernelError::driver("cuDeviceGetCount"))?;
    Ok(u32::try_from(n).unwrap_or(0))
}

/// Every GPU the driver reports. `Err(NoDriver)` without libcuda; `Ok(vec![])` with no devices.
///
/// Reading free memory retains each device's primary context for a moment (tens to hundreds
/// of milliseconds and some device memory the first time); it is released before returning
/// unless this process already holds it.
pub fn gpus() -> Result<Vec<GpuInfo>, KernelError> {
    (0..device_count()?).map(gpu_info).collect()
}

/// Compute capability of device `index` (driver already initialised).
pub(crate) fn compute_capability(dev: sys::CUdevice) -> Result<(u32, u32), KernelError> {
    let attr = |a, op| {
        // SAFETY: `dev` came from cuDeviceGet after a successful cuInit.
        let v = unsafe { result::device::get_attribute(dev, a) }.map_err(KernelError::driver(op))?;
        Ok::<u32, KernelError>(u32::try_from(v).unwrap_or(0))
    };
    Ok((
        attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
            "cuDeviceGetAttribute(major)",
        )?,
        attr(
            CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
            "cuDeviceGetAttribute(minor)",
        )?,
    ))
}

fn gpu_info(index: u32) -> Result<GpuInfo, KernelError> {
    let ordinal = i32::try_from(index).map_err(|_| KernelError::NoSuchDevice { index, count: 0 })?;
    let dev = result::device::get(ordinal).map_err(KernelError::driver("cuDeviceGet"))?;
    let name = result::device::get_name(dev).map_err(KernelError::driver("cuDeviceGetName"))?;
    // SAFETY: `dev` came from cuDeviceGet after a successful cuInit.
    let total = unsafe { result::device::total_mem(dev) }.map_err(KernelError::driver("cuDeviceTotalMem"))?;
    let pci_bus_id = pci_bus_id(dev)?;
    let free_bytes = usize::try_from(index)
        .ok()
        .and_then(|o| CudaContext::new(o).ok())
        .and_then(|ctx| ctx.mem_get_info().ok())
        .map_or(0, |(free, _)| free as u64);
    Ok(GpuInfo {
        index,
        name,
        total_bytes: total as u64,
        free_bytes,
        compute_capability: compute_capability(dev)?,
        numa_node: numa_node(Path::new("/sys"), &pci_bus_id),
        pci_bus_id,
    })
}

fn pci_bus_id(dev: sys::CUdevice) -> Result<String, KernelError> {
    let mut buf = [0 as c_char; 64];
    // SAFETY: `buf` has the 64 bytes we tell the driver (the documented bound is 13 + NUL);
    // `dev` came from cuDeviceGet after a successful cuInit.
    unsafe { sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), 64, dev) }
        .result()
        .map_err(KernelError::driver("cuDeviceGetPCIBusId"))?;
    // SAFETY: the driver NUL-terminates within the buffer; the last byte is still 0 anyway.
    let s = unsafe { CStr::from_ptr(buf.as_ptr()) };
    Ok(s.to_string_lossy().into_owned())
}

/// The sysfs name of a PCI function: `0000:1a:00.0` from `00000000:1A:00.0` or `0000:1a:00.0`.
pub fn sysfs_pci_address(bus_id: &str) -> Option<String> {
    let mut parts = bus_id.trim().split(':');
    let (domain, bus, dev_fn) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let (dev, func) = dev_fn.split_once('.')?;
    let domain = u32::from_str_radix(domain, 16).ok()?;
    let bus = u8::from_str_radix(bus, 16).ok()?;
    let dev = u8::from_str_radix(dev, 16).ok()?;
    let func = u8::from_str_radix(func, 16).ok()?;
    Some(format!("{domain:04x}:{bus:02x}:{dev:02x}.{func:x}"))
}

/// `<sysfs_root>/bus/pci/devices/<addr>/numa_node`, with `-1` (no NUMA) as `None`.
pub fn numa_node(sysfs_root: &Path, bus_id: &str) -> Option<i32> {
    let addr = sysfs_pci_address(bus_id)?;
    let text =
        std::fs::read_to_string(sysfs_root.join("bus/pci/devices").join(addr).join("numa_node")).ok()?;
    text.trim().parse::<i32>().ok().filter(|&n| n >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_normalise_to_sysfs_names() {
        assert_eq!(sysfs_pci_address("00000000:1A:00.0").as_deref(), Some("0000:1a:00.0"));
        assert_eq!(sysfs_pci_address("0000:c1:1f.7").as_deref(), Some("0000:c1:1f.7"));
        assert_eq!(sysfs_pci_address("garbage"), None);
        assert_eq!(sysfs_pci_address("0000:1a:00"), None);
    }

    #[test]
    fn numa_node_reads_sysfs_and_maps_minus_one_to_none() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("bus/pci/devices/0000:1a:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("numa_node"), "1\n").unwrap();
        assert_eq!(numa_node(root.path(), "00000000:1A:00.0"), Some(1));
        std::fs::write(dev.join("numa_node"), "-1\n").unwrap();
        assert_eq!(numa_node(root.path(), "0000:1A:00.0"), None);
        assert_eq!(numa_node(root.path(), "0000:1b:00.0"), None);
    }
}
