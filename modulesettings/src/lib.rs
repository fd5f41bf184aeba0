//! modulesettings
