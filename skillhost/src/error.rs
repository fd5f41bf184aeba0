//! Why a skill call failed, and who should act on it.

/// A failed skill call. Each kind names who should act, as Pharia Kernel's
/// API does: [`SkillError::status`] is the HTTP status the server answers
/// with, [`SkillError::code`] a stable code for clients.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SkillError {
    /// No skill by this name (404).
    #[error("{0}")]
    NotFound(String),
    /// The caller's input was refused: a bad name, or the skill's own
    /// `invalid-input` error (400).
    #[error("{0}")]
    InvalidInput(String),
    /// The skill returned its `internal` error (400: the skill's author
    /// acts).
    #[error("the skill failed: {0}")]
    Skill(String),
    /// The skill asked the CSI for something it cannot answer: an unknown
    /// model, an overlap past the chunk size (400).
    #[error("CSI {0}")]
    CsiRequest(String),
    /// The component is broken: not a component, built for another WIT
    /// version, imports modhost does not serve, or output that is not JSON
    /// (500: the skill's author acts).
    #[error("{0}")]
    Broken(String),
    /// The skill trapped (503).
    #[error("{0}")]
    Trapped(String),
    /// A sandbox limit stopped the skill: CPU time, memory, or every
    /// instance busy (503).
    #[error("{0}")]
    Limit(String),
    /// A CSI backend the skill needs is not available: the module that
    /// serves inference is not running, or failed (503).
    #[error("CSI {0}")]
    CsiUnavailable(String),
    /// The run was cancelled (503).
    #[error("{0}")]
    Cancelled(String),
}

impl SkillError {
    /// The HTTP status for this error: 400, 404, 500 or 503.
    pub fn status(&self) -> u16 {
        match self {
            SkillError::NotFound(_) => 404,
            SkillError::InvalidInput(_) | SkillError::Skill(_) | SkillError::CsiRequest(_) => 400,
            SkillError::Broken(_) => 500,
            SkillError::Trapped(_)
            | SkillError::Limit(_)
            | SkillError::CsiUnavailable(_)
            | SkillError::Cancelled(_) => 503,
        }
    }

    /// A stable code for clients: `not_found`, `invalid_input`,
    /// `skill_error`, `csi_request`, `broken_component`, `trapped`,
    /// `limit`, `csi_unavailable`, `cancelled`.
    pub fn code(&self) -> &'static str {
        match self {
            SkillError::NotFound(_) => "not_found",
            SkillError::InvalidInput(_) => "invalid_input",
            SkillError::Skill(_) => "skill_error",
            SkillError::CsiRequest(_) => "csi_request",
            SkillError::Broken(_) => "broken_component",
            SkillError::Trapped(_) => "trapped",
            SkillError::Limit(_) => "limit",
            SkillError::CsiUnavailable(_) => "csi_unavailable",
            SkillError::Cancelled(_) => "cancelled",
        }
    }
}

/// A CSI call that could not be answered. Returned by a host function, it
/// traps the skill, and the run fails with the matching [`SkillError`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum CsiError {
    /// The skill's request is wrong (an unknown model, bad parameters).
    #[error("{0}")]
    Request(String),
    /// The backend cannot answer now (its module is not running, failed or
    /// timed out).
    #[error("{0}")]
    Unavailable(String),
}

impl From<CsiError> for SkillError {
    fn from(e: CsiError) -> SkillError {
        match e {
            CsiError::Request(m) => SkillError::CsiRequest(m),
            CsiError::Unavailable(m) => SkillError::CsiUnavailable(m),
        }
    }
}
