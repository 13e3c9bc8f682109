//! Which rank am I? Read from the environment the launcher sets, without
//! linking MPI. Pure: the environment is passed in as a lookup function.
//!
//! | launcher | rank / size | local rank / size |
//! | --- | --- | --- |
//! | Open MPI `mpirun` | `OMPI_COMM_WORLD_RANK` / `_SIZE` | `OMPI_COMM_WORLD_LOCAL_RANK` / `_LOCAL_SIZE` |
//! | MPICH Hydra `mpiexec` | `PMI_RANK` / `PMI_SIZE` | `MPI_LOCALRANKID` / `MPI_LOCALNRANKS` |
//! | SLURM `srun` (a job step) | `SLURM_PROCID` / `SLURM_NTASKS` | `SLURM_LOCALID` / from `SLURM_TASKS_PER_NODE` and `SLURM_NODEID` |
//!
//! `PMIX_RANK` is cross-checked where present. A batch script (SLURM sets
//! `SLURM_PROCID=0` there too, but no `SLURM_STEP_ID`) counts as not launched.

/// Where this process is in the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RankInfo {
    pub rank: u32,
    pub size: u32,
    /// Rank among the processes on this node, if the launcher says.
    pub local_rank: Option<u32>,
    pub local_size: Option<u32>,
    /// Which launcher's variables were used.
    pub launcher: &'static str,
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn num(get: Lookup<'_>, name: &str) -> Result<Option<u32>, String> {
    match get(name) {
        None => Ok(None),
        Some(v) => v.trim().parse::<u32>().map(Some).map_err(|_| format!("{name}={v:?} is not a non-negative integer")),
    }
}

/// Rank, size and local placement from the launcher's variables; `Ok(None)`
/// when no launcher variables are present (a plain process). Inconsistent or
/// partial variables are an error: better to stop than to let every process
/// believe it is rank 0.
pub fn detect(get: Lookup<'_>) -> Result<Option<RankInfo>, String> {
    let sources: [(&'static str, &str, &str, &str, &str); 3] = [
        ("Open MPI", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"),
        ("MPICH/Hydra", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"),
        ("SLURM srun", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", ""),
    ];
    let in_slurm_step = get("SLURM_STEP_ID").or_else(|| get("SLURM_STEPID")).is_some();
    let mut found: Vec<RankInfo> = Vec::new();
    for (launcher, rank_var, size_var, lrank_var, lsize_var) in sources {
        if launcher == "SLURM srun" && !in_slurm_step {
            continue; // a batch script, not a task of a step
        }
        let rank = num(get, rank_var)?;
        let size = if launcher == "SLURM srun" { num(get, size_var)?.or(num(get, "SLURM_NPROCS")?) } else { num(get, size_var)? };
        match (rank, size) {
            (None, None) => continue,
            (Some(_), None) => return Err(format!("{launcher}: {rank_var} is set but {size_var} is not; cannot tell the world size")),
            (None, Some(s)) => return Err(format!("{launcher}: {size_var}={s} is set but {rank_var} is not; cannot tell this process's rank")),
            (Some(r), Some(s)) => {
                if s == 0 || r >= s {
                    return Err(format!("{launcher}: rank {r} is not below world size {s}"));
                }
                let local_rank = num(get, lrank_var)?;
                let local_size = if lsize_var.is_empty() { slurm_local_size(get)? } else { num(get, lsize_var)? };
                if let (Some(lr), Some(ls)) = (local_rank, local_size) {
                    if ls == 0 || lr >= ls || ls > s {
                        return Err(format!("{launcher}: local rank {lr} of local size {ls} (world size {s}) is inconsistent"));
                    }
                }
                found.push(RankInfo { rank: r, size: s, local_rank, local_size, launcher });
            }
        }
    }
    let Some(first) = found.first().cloned() else {
        if let Some(pr) = num(get, "PMIX_RANK")? {
            return Err(format!(
                "PMIX_RANK={pr} is set but no launcher variables give the world size; start taskfarm with Open MPI's mpirun, MPICH's mpiexec or srun"
            ));
        }
        return Ok(None);
    };
    // Open MPI and MPICH together would be a confused environment; SLURM's
    // variables under mpirun describe the daemons, not the ranks: ignored.
    for other in found.iter().skip(1).filter(|o| o.launcher != "SLURM srun") {
        if other.rank != first.rank || other.size != first.size {
            return Err(format!(
                "{} says rank {} of {} but {} says rank {} of {}: mixed MPI environments",
                first.launcher, first.rank, first.size, other.launcher, other.rank, other.size
            ));
        }
    }
    if first.launcher == "Open MPI" {
        if let Some(pr) = num(get, "PMIX_RANK")? {
            if pr != first.rank {
                return Err(format!("OMPI_COMM_WORLD_RANK={} but PMIX_RANK={pr}: inconsistent launcher environment", first.rank));
            }
        }
    }
    Ok(Some(first))
}

/// An identity that every rank of one launch shares and that no other launch
/// running at the same time has, from the launcher's environment: Open MPI's
/// HNP contact (job id and mpirun's address) or PMIx namespace, a SLURM job
/// step, or — MPICH's Hydra sets nothing of the kind — the `hydra_pmi_proxy`
/// process that started the ranks of a single-node job (`hydra_proxy`, host,
/// pid and start time), qualified by the batch job when there is one. Hashed,
/// so it is short and safe in a file name. `None` when nothing identifies
/// the launch (Hydra across nodes outside a batch job).
pub fn launch_id(get: Lookup<'_>, hydra_proxy: &dyn Fn() -> Option<String>) -> Option<String> {
    let batch_job = ["SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "JOB_ID"].iter().find_map(|k| get(k).map(|v| format!("{k}={v}")));
    let raw = if let Some(hnp) = get("OMPI_MCA_orte_hnp_uri") {
        format!("ompi:{hnp}")
    } else if let Some(ns) = get("PMIX_NAMESPACE") {
        format!("pmix:{ns}:{}", get("PMIX_SERVER_URI41").or_else(|| get("PMIX_SERVER_URI4")).unwrap_or_default())
    } else if get("PMI_RANK").is_some() {
        let single_node = get("MPI_LOCALNRANKS").is_some() && get("MPI_LOCALNRANKS") == get("PMI_SIZE");
        match (single_node.then(hydra_proxy).flatten(), &batch_job) {
            (Some(proxy), _) => format!("hydra:{proxy}:{}", batch_job.clone().unwrap_or_default()),
            (None, Some(job)) => format!("hydra:{job}:{}", get("SLURM_STEP_ID").unwrap_or_default()),
            (None, None) => return None,
        }
    } else if let (Some(job), Some(step)) = (get("SLURM_JOB_ID"), get("SLURM_STEP_ID").or_else(|| get("SLURM_STEPID"))) {
        format!("slurm:{job}.{step}")
    } else {
        return None;
    };
    use sha2::Digest;
    Some(crate::util::hex(&sha2::Sha256::digest(raw.as_bytes())[..8]))
}

/// The `hydra_pmi_proxy` among this process's ancestors, as "host:pid:start".
pub fn hydra_proxy_ancestor() -> Option<String> {
    let mut pid = std::process::id();
    for _ in 0..16 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if comm.starts_with("hydra_pmi_prox") {
            return Some(format!("{}:{pid}:{}", crate::util::hostname(), fields.get(19)?));
        }
        pid = fields.get(1)?.parse().ok().filter(|&p: &u32| p > 1)?;
    }
    None
}

/// SLURM's tasks on this node: `SLURM_TASKS_PER_NODE` (e.g. `2(x3),1`)
/// expanded, indexed by `SLURM_NODEID`.
fn slurm_local_size(get: Lookup<'_>) -> Result<Option<u32>, String> {
    let (Some(spec), Some(node)) = (get("SLURM_TASKS_PER_NODE"), num(get, "SLURM_NODEID")?) else { return Ok(None) };
    let per_node = expand_slurm_counts(&spec).ok_or_else(|| format!("SLURM_TASKS_PER_NODE={spec:?} is not in SLURM's N(xM),... form"))?;
    Ok(per_node.get(node as usize).copied())
}

/// `2(x3),1` → `[2, 2, 2, 1]`.
pub fn expand_slurm_counts(spec: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once("(x") {
            Some((n, rest)) => {
                let n: u32 = n.parse().ok()?;
                let times: usize = rest.strip_suffix(')')?.parse().ok()?;
                if times > 1_000_000 {
                    return None;
                }
                out.extend(std::iter::repeat_n(n, times));
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| m.get(k).cloned()
    }

    #[test]
    fn open_mpi() {
        let e = env(&[
            ("OMPI_COMM_WORLD_RANK", "2"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
            ("PMIX_RANK", "2"),
        ]);
        assert_eq!(detect(&e).unwrap(), Some(RankInfo { rank: 2, size: 4, local_rank: Some(0), local_size: Some(2), launcher: "Open MPI" }));
    }

    #[test]
    fn hydra_and_slurm_step() {
        let e = env(&[("PMI_RANK", "1"), ("PMI_SIZE", "3"), ("MPI_LOCALRANKID", "1"), ("MPI_LOCALNRANKS", "3")]);
        assert_eq!(detect(&e).unwrap().unwrap().launcher, "MPICH/Hydra");
        let e = env(&[
            ("SLURM_STEP_ID", "0"),
            ("SLURM_PROCID", "4"),
            ("SLURM_NTASKS", "7"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NODEID", "2"),
            ("SLURM_TASKS_PER_NODE", "2(x3),1"),
        ]);
        assert_eq!(detect(&e).unwrap(), Some(RankInfo { rank: 4, size: 7, local_rank: Some(1), local_size: Some(2), launcher: "SLURM srun" }));
    }

    #[test]
    fn batch_script_and_plain_process_are_not_launched() {
        assert_eq!(detect(&env(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "8")])).unwrap(), None);
        assert_eq!(detect(&env(&[])).unwrap(), None);
    }

    #[test]
    fn mpirun_inside_a_slurm_step_uses_mpi_variables() {
        let e = env(&[("SLURM_STEP_ID", "1"), ("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2"), ("OMPI_COMM_WORLD_RANK", "3"), ("OMPI_COMM_WORLD_SIZE", "8")]);
        let r = detect(&e).unwrap().unwrap();
        assert_eq!((r.rank, r.size, r.launcher), (3, 8, "Open MPI"));
    }

    #[test]
    fn inconsistent_environments_are_errors() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("OMPI_COMM_WORLD_SIZE", "4")], "cannot tell this process's rank"),
            (&[("PMI_RANK", "1")], "cannot tell the world size"),
            (&[("OMPI_COMM_WORLD_RANK", "4"), ("OMPI_COMM_WORLD_SIZE", "4")], "not below world size"),
            (&[("OMPI_COMM_WORLD_RANK", "x"), ("OMPI_COMM_WORLD_SIZE", "4")], "not a non-negative integer"),
            (&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "4"), ("PMIX_RANK", "0")], "inconsistent"),
            (&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "4"), ("PMI_RANK", "0"), ("PMI_SIZE", "4")], "mixed MPI"),
            (&[("PMIX_RANK", "0")], "no launcher variables give the world size"),
            (&[("PMI_RANK", "0"), ("PMI_SIZE", "2"), ("MPI_LOCALRANKID", "3"), ("MPI_LOCALNRANKS", "2")], "inconsistent"),
        ];
        for (pairs, want) in cases {
            let e = detect(&env(pairs)).unwrap_err();
            assert!(e.contains(want), "{pairs:?}: {e}");
        }
    }

    #[test]
    fn launch_ids_are_shared_by_one_launch_and_differ_between_launches() {
        let none = || None;
        let proxy = || Some("node1:4242:777".to_string());
        let a = launch_id(&env(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_MCA_orte_hnp_uri", "1153695744.0;tcp://10.0.0.1:34967")]), &none);
        let a1 = launch_id(&env(&[("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_MCA_orte_hnp_uri", "1153695744.0;tcp://10.0.0.1:34967")]), &none);
        let b = launch_id(&env(&[("OMPI_MCA_orte_hnp_uri", "1153695744.0;tcp://10.0.0.1:34968")]), &none);
        assert!(a.is_some() && a == a1 && a != b, "{a:?} {a1:?} {b:?}");
        assert_eq!(a.unwrap().len(), 16);
        let s1 = launch_id(&env(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "0"), ("SLURM_PROCID", "0")]), &none);
        let s2 = launch_id(&env(&[("SLURM_JOB_ID", "7"), ("SLURM_STEP_ID", "1"), ("SLURM_PROCID", "0")]), &none);
        assert!(s1.is_some() && s1 != s2);
        // Hydra: the proxy on one node; the batch job across nodes; else unknown.
        let local = [("PMI_RANK", "0"), ("PMI_SIZE", "3"), ("MPI_LOCALNRANKS", "3")];
        assert!(launch_id(&env(&local), &proxy).is_some());
        assert_ne!(launch_id(&env(&local), &proxy), launch_id(&env(&local), &|| Some("node1:4243:778".to_string())));
        let spread = [("PMI_RANK", "0"), ("PMI_SIZE", "3"), ("MPI_LOCALNRANKS", "1")];
        assert_eq!(launch_id(&env(&spread), &proxy), None);
        let mut in_job = spread.to_vec();
        in_job.push(("PBS_JOBID", "12.pbs"));
        assert!(launch_id(&env(&in_job), &proxy).is_some());
        assert_eq!(launch_id(&env(&[]), &proxy), None);
    }

    #[test]
    fn slurm_count_lists() {
        assert_eq!(expand_slurm_counts("2(x3),1"), Some(vec![2, 2, 2, 1]));
        assert_eq!(expand_slurm_counts("4"), Some(vec![4]));
        assert_eq!(expand_slurm_counts("2(x"), None);
    }
}
