"""D-Bus adapters: NetworkManager, ModemManager and logind.

Each adapter has a Protocol (`NetworkManagerApi`, `ModemManagerApi`, `LogindApi`), a real
synchronous client (`NetworkManagerClient`, `ModemManagerClient`, `LogindClient`) and a fake
in `meterguard.system.fakes`. Import the submodules directly; this package imports nothing.
"""
