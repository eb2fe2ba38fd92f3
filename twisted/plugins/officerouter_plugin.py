from twisted.application.service import ServiceMaker

officerouter = ServiceMaker(
    "officerouter",
    "officerouter.tap",
    "Real-time WebSocket router for a virtual office.",
    "officerouter",
)
