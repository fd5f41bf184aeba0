//! The model file in the page cache in 2 MiB pages, so that llama.cpp's
//! memory map of it is mapped with one page-table entry per 2 MiB.
//!
//! On a CPU, decoding a token streams every weight from memory. With the
//! weights in 4 KiB pages that is one TLB miss per 4 KiB, and the hardware
//! prefetchers stop at each 4 KiB boundary. llama.cpp maps the GGUF file
//! (`mmap`), so its pages are the page cache's: on a kernel and filesystem
//! with large folios, a file the page cache holds in 2 MiB folios is mapped
//! with 2 MiB entries (`FilePmdMapped` in `/proc/<pid>/smaps`), and in
//! smaller ones otherwise. Which it gets depends on how the file came into
//! the cache (written, read with `read`, faulted in by a mapping), so the
//! same model decoded 10 % or more faster or slower from one start to the
//! next on the 2-core build machine (BENCHMARKS.md, "Huge pages").
//!
//! [`warm`] fixes that before llama.cpp loads the model: it maps the file
//! itself with `MADV_HUGEPAGE`, under which a fault reads ahead a whole
//! 2 MiB folio, and faults it all in (`MADV_POPULATE_READ`, Linux 5.14+).
//! Parts the cache already held in small folios stay small, so when less
//! than [`ENOUGH`] of the file came out in 2 MiB pages it drops the file's
//! cached pages that no process maps (`POSIX_FADV_DONTNEED`) and reads it
//! again, once: that costs a second read from the disk, against a slower
//! decode for as long as the module runs. Pages another process maps (a
//! second server on the same file) are never dropped, and stay as they are.
//!
//! Linux only; elsewhere, and where the kernel or filesystem cannot (THP
//! `never`, no large folios), the file is left as it is and the report says
//! how much is in 2 MiB pages.

use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// The share of the file's whole 2 MiB blocks that, mapped in 2 MiB pages,
/// is enough not to read the file again.
pub const ENOUGH: f64 = 0.9;

/// A huge page, bytes.
const HUGE: u64 = 2 << 20;

/// What [`warm`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Warmed {
    /// The share of the file's whole 2 MiB blocks mapped in 2 MiB pages at
    /// the first look, `0.0..=1.0`.
    pub before: f64,
    /// The same once done (equal to `before` when the file was not read
    /// again).
    pub after: f64,
    /// Whether the file's unmapped cached pages were dropped and it was read
    /// again.
    pub reread: bool,
    /// Time taken.
    pub took: Duration,
}

/// Puts `path` in the page cache in 2 MiB pages as far as the system allows;
/// see the module documentation. Where it cannot, the report says how much
/// is in 2 MiB pages, and the file is not read again.
///
/// # Errors
/// The file cannot be opened or mapped, or `/proc/self/smaps` cannot be
/// read (not Linux). The caller loads the model regardless: this only
/// affects its speed.
pub fn warm(path: &Path) -> std::io::Result<Warmed> {
    let started = Instant::now();
    let file = File::open(path)?;
    let blocks = file.metadata()?.len() / HUGE;
    if blocks == 0 {
        return Ok(Warmed {
            before: 1.0,
            after: 1.0,
            reread: false,
            took: started.elapsed(),
        });
    }
    let share = |huge: u64| (huge as f64 / (blocks * HUGE) as f64).min(1.0);
    let (huge, able) = fault_in(&file)?;
    let before = share(huge);
    // Reading it again helps only where 2 MiB pages can be had.
    if before >= ENOUGH || !able {
        return Ok(Warmed {
            before,
            after: before,
            reread: false,
            took: started.elapsed(),
        });
    }
    drop_cached(&file)?;
    let after = share(fault_in(&file)?.0);
    Ok(Warmed {
        before,
        after,
        reread: true,
        took: started.elapsed(),
    })
}

/// Maps `file` with `MADV_HUGEPAGE`, faults it all in, and returns how many
/// of its bytes that mapping has in 2 MiB pages, and whether the kernel took
/// the advice (not without transparent huge pages, or with them `never`).
/// The mapping is gone on return; the page cache keeps what it read.
fn fault_in(file: &File) -> std::io::Result<(u64, bool)> {
    // SAFETY: read-only, and only our own reads: `advise` and the smaps
    // lookup never dereference it, so a file truncated meanwhile cannot
    // fault this process.
    let map = unsafe { memmap2::Mmap::map(file)? };
    #[cfg(target_os = "linux")]
    let able = {
        // The advice is taken under `never` too, and then does nothing.
        let never = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
            .is_ok_and(|mode| mode.contains("[never]"));
        let able = !never && map.advise(memmap2::Advice::HugePage).is_ok();
        // Before Linux 5.14 there is no MADV_POPULATE_READ: llama.cpp's
        // own load then faults the file in, under its own advice.
        if able {
            let _ = map.advise(memmap2::Advice::PopulateRead);
        }
        able
    };
    #[cfg(not(target_os = "linux"))]
    let able = false;
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    Ok((pmd_mapped(&smaps, map.as_ptr() as usize).unwrap_or(0), able))
}

/// Drops the pages of `file` that the page cache holds and no process maps.
fn drop_cached(file: &File) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a plain syscall on a descriptor we own; it reads no memory.
        let err = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if err != 0 {
            return Err(std::io::Error::from_raw_os_error(err));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
    Ok(())
}

/// Bytes of the mappings in `smaps` (the text of `/proc/<pid>/smaps`,
/// whose sizes are in kB) whose header line (`start-end perms offset dev
/// inode path`) satisfies `wanted`, summed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MappedBytes {
    /// Their size (`Size:`).
    pub size: u64,
    /// How much of it is mapped in 2 MiB file pages (`FilePmdMapped:`; 0 on
    /// a kernel without file THP).
    pub pmd: u64,
}

/// Sums [`MappedBytes`] over the mappings of `smaps` whose header satisfies
/// `wanted`; `None` when there are none.
pub fn mapped_bytes(smaps: &str, wanted: impl Fn(&str) -> bool) -> Option<MappedBytes> {
    let mut found = None::<MappedBytes>;
    let mut inside = false;
    for line in smaps.lines() {
        // A header's first field is the address range, `start-end`.
        if line
            .split_whitespace()
            .next()
            .is_some_and(|f| f.contains('-'))
        {
            inside = wanted(line);
            if inside {
                found.get_or_insert_with(MappedBytes::default);
            }
            continue;
        }
        let Some(sum) = found.as_mut().filter(|_| inside) else {
            continue;
        };
        let kb = |rest: &str| -> u64 {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0)
        };
        if let Some(rest) = line.strip_prefix("Size:") {
            sum.size += kb(rest) * 1024;
        } else if let Some(rest) = line.strip_prefix("FilePmdMapped:") {
            sum.pmd += kb(rest) * 1024;
        }
    }
    found
}

/// Bytes of the mapping that starts at `start` mapped in 2 MiB file pages.
fn pmd_mapped(smaps: &str, start: usize) -> Option<u64> {
    let header = format!("{start:x}-");
    mapped_bytes(smaps, |h| h.starts_with(&header)).map(|m| m.pmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
7f4708405000-7f472ab43000 r--s 00005000 fe:00 5431393    /models/bench.gguf
Size:             564472 kB
Rss:              564472 kB
FilePmdMapped:    407552 kB
VmFlags: rd sh mr mw me ms hg
7f472ab43000-7f472ab45000 rw-p 00000000 00:00 0
Size:                  8 kB
FilePmdMapped:         0 kB
";

    #[test]
    fn reads_the_pmd_mapped_bytes_of_the_mapping_that_starts_at_the_address() {
        assert_eq!(pmd_mapped(SMAPS, 0x7f47_0840_5000), Some(407_552 * 1024));
        assert_eq!(pmd_mapped(SMAPS, 0x7f47_2ab4_3000), Some(0));
        // Inside a mapping, not at its start.
        assert_eq!(pmd_mapped(SMAPS, 0x7f47_0840_6000), None);
    }

    #[test]
    fn sums_the_mappings_a_header_selects_and_takes_nothing_from_the_others() {
        let smaps = "\
1000-2000 r--p 00000000 fe:00 1    /m/a.gguf
Size:                  4 kB
3000-4000 r--p 00000000 fe:00 2    /m/b.gguf
Size:               4096 kB
FilePmdMapped:      2048 kB
5000-6000 r--p 00400000 fe:00 2    /m/b.gguf
Size:               2048 kB
FilePmdMapped:      2048 kB
";
        let b = mapped_bytes(smaps, |h| h.ends_with("/b.gguf")).unwrap();
        assert_eq!((b.size, b.pmd), (6144 * 1024, 4096 * 1024));
        // A mapping without the line has no 2 MiB pages.
        let a = mapped_bytes(smaps, |h| h.ends_with("/a.gguf")).unwrap();
        assert_eq!((a.size, a.pmd), (4096, 0));
        assert_eq!(mapped_bytes(smaps, |h| h.ends_with("/c.gguf")), None);
    }

    #[test]
    fn a_file_under_two_mib_has_nothing_to_put_in_huge_pages() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("small.gguf");
        std::fs::write(&path, vec![7u8; 100_000]).unwrap();
        let warmed = warm(&path).unwrap();
        assert_eq!(
            (warmed.before, warmed.after, warmed.reread),
            (1.0, 1.0, false)
        );
        assert_eq!(std::fs::read(&path).unwrap(), vec![7u8; 100_000]);
    }

    #[test]
    fn warming_a_large_file_reports_shares_and_leaves_its_bytes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("large.gguf");
        let bytes: Vec<u8> = (0..(9u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let warmed = warm(&path).unwrap();
        assert!((0.0..=1.0).contains(&warmed.before), "{warmed:?}");
        assert!((0.0..=1.0).contains(&warmed.after), "{warmed:?}");
        // Read again only when too little came out in 2 MiB pages; when
        // not read again, the report is the first look's.
        assert!(!warmed.reread || warmed.before < ENOUGH, "{warmed:?}");
        assert!(warmed.reread || warmed.after == warmed.before, "{warmed:?}");
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }
}
